"""credpath's store backends, one module each (see ``credpath.registry.ALIASES``)."""

__all__: list[str] = []

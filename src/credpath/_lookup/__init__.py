"""The search path's machinery, one concern per module (``credpath._search_path.SearchPath`` is its facade).

- ``trace``: a lookup's context and the events of its resolution; subscribers (metrics, ``explain``).
- ``model``: the values passed around (Entry, Resolution, Explanation, PrefetchReport, Listing).
- ``state``: what a search path holds (entries, the two cache tiers, warnings per outage episode).
- ``policy``: THE error policy with its written rules, the breaker around every store call, and the
  backed-off refresh of a value served stale.
- ``resolution``: asking the backends in order for one id.
- ``tiers``: the process tier, then the shared tier, then a resolution; each says which tier served.
- ``prefetch``, ``writes``, ``listing``: the other operations, through the same policy.
"""

__all__: list[str] = []

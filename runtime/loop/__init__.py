"""The real-time loop, by concern: the tick (``runner``), its schedule of stages (``schedule``, ``stages``),
engine workers, camera grouping, deadlines and their tally, fallback, health and plausibility limits.

Decisions are pure functions (``schedule``, ``camera_group``, ``budget``, ``fallback``, ``health``,
``limits``, ``tally``, ``stages``) tested without threads or clocks; ``runner`` holds the threads and clocks.
"""

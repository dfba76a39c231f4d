"""``vla-serve``: a bundle served as NVIDIA AlpaSim's driver, over the egodriver gRPC contract.

AlpaSim (and autoware_carla_scenario, and ``carla-driver-interface``'s ``FakeLoop``) steps a simulated
world and asks a driver service for a plan at each step: ``start_session`` declares the cameras,
``submit_image_observation`` / ``submit_egomotion_observation`` / ``submit_route`` bring the step's
observations, and ``drive`` wants poses in the simulator's ``local`` frame on its microsecond clock.
This package answers those calls with the runtime's own engine and inputs (the same preprocessing,
ego history, command encoding, decode and plausibility limits as ``vla-run``), so what is simulated is
what a vehicle runs.

The contract's plumbing (service definition, session bookkeeping, the revision header, message limits)
comes from ``carla-driver-interface``, which vendors AlpaSim's protos unchanged; this package subclasses
its servicer where the runtime needs more (images decoded and checked at submit, the ego's pose at the
drive time, an empty plan until there is something to decide on).

Modules: ``egomotion`` and ``plan`` (pure: local-frame poses in, kinematics and plans out), ``cameras``
(which simulator camera feeds which bundle camera; decoding), ``route`` (the route's next turn as a
command), ``session`` (one rollout's state), ``decide`` (one decision on the engine), ``server`` (the
gRPC service and its lifecycle), ``cli`` (``vla-serve``).
"""

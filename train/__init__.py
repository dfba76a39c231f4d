"""``vla.train``: imitation learning (+ DAgger) of reference model 2 on the synthetic world's scripted expert.

``data`` builds samples from drives with the runtime's own input code, ``flow`` is the flow-matching loss,
``loop`` the run (phases, DAgger, closed-loop check, weights), ``card`` the model card, ``cli`` ``vla-train``.
"""

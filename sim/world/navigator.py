"""The navigator: which route command applies at a point of the route (pure functions)."""

from __future__ import annotations

from .scenario import Route

#: The route commands, as phrases of the reference vocabulary (export/reference.py COMMANDS).
COMMAND_PHRASES = {"follow": "follow the road", "straight": "go straight", "left": "turn left",
                   "right": "turn right", "lane_change_left": "change lane to the left",
                   "lane_change_right": "change lane to the right", "stop": "stop"}

TURN_NOTICE = 50.0  # m before a junction where the route turns: its command starts
STRAIGHT_NOTICE = 25.0  # m before a junction the route goes straight through (roads are ~50 m long:
# a 50 m notice there would leave no "follow the road" at all)
LANE_CHANGE_NOTICE = 10.0  # m before the lane change starts
STOP_NOTICE = 30.0  # m before the goal


def command_key(route: Route, s: float) -> str:
    """The command key at route arc length ``s`` (of the ego's centre).

    Precedence: the junction being crossed (its command holds until through it), then a due lane
    change, then the junction being approached (from TURN_NOTICE, or STRAIGHT_NOTICE, before it), then the stop near the
    goal, else follow the road.
    """
    for c in route.crossings:
        if c.s_entry <= s < c.s_exit:
            return c.turn
    lc = route.lane_change
    if lc is not None and lc.s_start - LANE_CHANGE_NOTICE <= s < lc.s_end:
        return f"lane_change_{lc.direction}"
    for c in route.crossings:
        if c.s_entry - (STRAIGHT_NOTICE if c.turn == "straight" else TURN_NOTICE) <= s < c.s_entry:
            return c.turn
    if s >= route.s_goal - STOP_NOTICE:
        return "stop"
    return "follow"

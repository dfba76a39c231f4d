"""What the loop feeds a model: camera sources (``sources``), their preprocessing, the vehicle state
(``ego``, ``ego_input``), route commands and text (``commands``, ``text``), and seeded example feeds."""

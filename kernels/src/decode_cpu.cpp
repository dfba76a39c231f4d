// Placeholder until decode_trajectory lands.

"""The pure core: import status, events, rules, schedule, ETA. No I/O, no clock reads."""

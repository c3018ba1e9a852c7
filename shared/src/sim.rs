//! A seeded, sans-IO link simulator.

//! Reliability: a catalogue of bad inputs, each with its exit code and message.

//! Differential execution: the planned CPU executor against the f64 reference evaluator.

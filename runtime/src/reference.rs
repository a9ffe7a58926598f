//! The reference evaluator: every op of the checked graph materialised in f64, written for
//! clarity, the oracle of the differential tests. (Being built: issue 4.)

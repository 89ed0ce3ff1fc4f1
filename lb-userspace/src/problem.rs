//! Why a Service cannot be programmed as it asks: decided by the pure
//! stages (model, selection, planning), reported by the agent as a log line,
//! a metric and, from the Kubernetes source, an Event on the Service.

use std::fmt;

use crate::ident::ObjectName;

/// What kind of problem a Service has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemReason {
    /// Another Service holds a frontend this one claims.
    FrontendConflict,
    /// A port the data path does not serve (SCTP) was skipped.
    UnsupportedPort,
    /// A map is full: some frontends of the Service are not programmed.
    Capacity,
    /// The Service has IPv6 frontends, which the data path does not serve yet.
    Ipv6NotServed,
}

impl ProblemReason {
    /// The Event reason (CamelCase, as Kubernetes spells reasons).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ProblemReason::FrontendConflict => "FrontendConflict",
            ProblemReason::UnsupportedPort => "UnsupportedPort",
            ProblemReason::Capacity => "CapacityExceeded",
            ProblemReason::Ipv6NotServed => "IPv6NotServed",
        }
    }
}

impl fmt::Display for ProblemReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem of one Service, worded for its owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceProblem {
    /// The Service concerned.
    pub service: ObjectName,
    /// What kind of problem.
    pub reason: ProblemReason,
    /// What happened and what was done, in one sentence.
    pub message: String,
}

impl fmt::Display for ServiceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {}: {} ({})",
            self.service, self.message, self.reason
        )
    }
}

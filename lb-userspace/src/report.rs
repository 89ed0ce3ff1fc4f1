//! Reports the problems of Services as each sync finds them: a problem is
//! logged once when it appears (again if it goes and comes back), counted
//! while it lasts (`lb_service_problems{reason}`), and, with the Kubernetes
//! source, offered to an [`EventSink`] that posts a Warning Event on the
//! Service. Offering never waits: when the sink's queue is full the Event
//! is dropped and counted, so a slow API server never holds up a sync.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::warn;

use crate::{
    problem::{ProblemReason, ServiceProblem},
    source::events::{EventSink, Offered},
};

/// Labels of the current-problems gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The problem's reason (`ProblemReason::as_str`).
    pub reason: String,
}

/// What became of one Event.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum EventOutcome {
    /// The API server took it.
    Posted,
    /// The queue to the poster was full (or closed): not sent.
    Dropped,
    /// The API server refused it, or could not be reached.
    Failed,
}

impl EventOutcome {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            EventOutcome::Posted => "posted",
            EventOutcome::Dropped => "dropped",
            EventOutcome::Failed => "failed",
        }
    }
}

/// Labels of the Events counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What became of the Event (`EventOutcome::as_str`).
    pub outcome: String,
}

/// The problems' metrics (registered by `Metrics`; clones share the series).
#[derive(Clone, Debug, Default)]
pub struct ProblemMetrics {
    current: Family<ReasonLabels, Gauge>,
    events: Family<OutcomeLabels, Counter>,
}

impl ProblemMetrics {
    /// Registers the series (`lb_service_problems`, `lb_service_problem_events_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "service_problems",
            "Services that cannot be programmed as they ask, by reason, as of the last sync",
            self.current.clone(),
        );
        registry.register(
            "service_problem_events",
            "Kubernetes Events about Service problems, by outcome",
            self.events.clone(),
        );
    }

    /// Counts one Event's outcome.
    pub fn count_event(&self, outcome: EventOutcome) {
        self.events.get_or_create(&outcome_labels(outcome)).inc();
    }

    /// How many Events had `outcome` (for tests and logs).
    #[must_use]
    pub fn events(&self, outcome: EventOutcome) -> u64 {
        self.events.get_or_create(&outcome_labels(outcome)).get()
    }

    /// The current number of problems with `reason`.
    #[must_use]
    pub fn current(&self, reason: ProblemReason) -> i64 {
        self.current.get_or_create(&reason_labels(reason)).get()
    }
}

fn outcome_labels(outcome: EventOutcome) -> OutcomeLabels {
    OutcomeLabels {
        outcome: outcome.as_str().to_string(),
    }
}

fn reason_labels(reason: ProblemReason) -> ReasonLabels {
    ReasonLabels {
        reason: reason.as_str().to_string(),
    }
}

/// The problems that last from one sync to the next.
#[derive(Debug, Default)]
pub struct ProblemLog {
    current: BTreeSet<ServiceProblem>,
}

impl ProblemLog {
    /// Takes a sync's current problems; returns those that were not current
    /// at the previous one (a changed message is a new problem).
    pub fn observe(&mut self, problems: &[ServiceProblem]) -> Vec<ServiceProblem> {
        let now: BTreeSet<ServiceProblem> = problems.iter().cloned().collect();
        let new = now.difference(&self.current).cloned().collect();
        self.current = now;
        new
    }

    /// The current problems by reason.
    #[must_use]
    pub fn counts(&self) -> BTreeMap<ProblemReason, usize> {
        let mut counts = BTreeMap::new();
        for problem in &self.current {
            *counts.entry(problem.reason).or_default() += 1;
        }
        counts
    }
}

/// Logs, counts and (with a sink) posts the problems of each sync.
pub struct Reporter {
    log: ProblemLog,
    metrics: ProblemMetrics,
    /// Every reason counted so far: its gauge goes back to 0, not away.
    reasons: BTreeSet<ProblemReason>,
    sink: Option<EventSink>,
}

impl Reporter {
    /// A reporter into `metrics`, posting Events through `sink` if any.
    #[must_use]
    pub fn new(metrics: ProblemMetrics, sink: Option<EventSink>) -> Self {
        Self {
            log: ProblemLog::default(),
            metrics,
            reasons: BTreeSet::new(),
            sink,
        }
    }

    /// Takes a sync's current problems: logs and offers the new ones, and
    /// sets the gauge. Never waits.
    pub fn observe(&mut self, problems: &[ServiceProblem]) {
        let mut dropped = 0u64;
        for problem in self.log.observe(problems) {
            warn!("{problem}");
            let Some(sink) = &self.sink else { continue };
            if !matches!(sink.offer(problem), Offered::Queued) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.metrics
                .events
                .get_or_create(&outcome_labels(EventOutcome::Dropped))
                .inc_by(dropped);
            warn!(
                dropped,
                "too many Events waiting to be posted: dropped these (logged above)"
            );
        }
        let counts = self.log.counts();
        self.reasons.extend(counts.keys().copied());
        for &reason in &self.reasons {
            let count = counts.get(&reason).copied().unwrap_or(0);
            self.metrics
                .current
                .get_or_create(&reason_labels(reason))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::ObjectName;

    fn problem(name: &str, reason: ProblemReason, message: &str) -> ServiceProblem {
        ServiceProblem {
            service: ObjectName {
                namespace: "default".into(),
                name: name.into(),
            },
            reason,
            message: message.into(),
        }
    }

    #[test]
    fn a_problem_is_new_once_while_it_lasts_and_again_when_it_returns() {
        let mut log = ProblemLog::default();
        let a = problem("a", ProblemReason::FrontendConflict, "lost 10.0.0.1:53/UDP");
        let b = problem("b", ProblemReason::UnsupportedPort, "SCTP port skipped");
        // The names of the new problems when `now` are current.
        let mut new = |now: &[&ServiceProblem]| -> Vec<String> {
            let now: Vec<ServiceProblem> = now.iter().map(|&p| p.clone()).collect();
            log.observe(&now)
                .into_iter()
                .map(|p| format!("{}:{}", p.service.name, p.message))
                .collect()
        };
        assert_eq!(new(&[&a]), ["a:lost 10.0.0.1:53/UDP"]);
        assert_eq!(new(&[&a, &b]), ["b:SCTP port skipped"]);
        assert!(new(&[&b, &a]).is_empty(), "lasting: not new");
        assert!(new(&[&b]).is_empty());
        assert_eq!(
            new(&[&a, &b]),
            ["a:lost 10.0.0.1:53/UDP"],
            "back: new again"
        );
        let changed = problem(
            "b",
            ProblemReason::UnsupportedPort,
            "two SCTP ports skipped",
        );
        assert_eq!(new(&[&a, &changed]), ["b:two SCTP ports skipped"]);
    }

    #[test]
    fn the_gauge_follows_the_current_problems_and_returns_to_zero() {
        let metrics = ProblemMetrics::default();
        let mut reporter = Reporter::new(metrics.clone(), None);
        let conflicts = [
            problem("a", ProblemReason::FrontendConflict, "x"),
            problem("b", ProblemReason::FrontendConflict, "y"),
        ];
        reporter.observe(&conflicts);
        assert_eq!(metrics.current(ProblemReason::FrontendConflict), 2);
        reporter.observe(&conflicts[..1]);
        assert_eq!(metrics.current(ProblemReason::FrontendConflict), 1);
        reporter.observe(&[]);
        assert_eq!(metrics.current(ProblemReason::FrontendConflict), 0);
        let mut registry = Registry::with_prefix("lb");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("lb_service_problems{reason=\"FrontendConflict\"} 0"),
            "{text}"
        );
    }
}

//! Kubernetes Events on Services that cannot be programmed as they ask,
//! posted with kube-rs' `Recorder` by a task of their own: the sync loop
//! offers each new problem on a bounded queue and never waits for the API
//! server. Each Event is a Warning on the Service (looked up first, for its
//! uid: `kubectl describe` matches Events by it), reason
//! `ProblemReason::as_str`, note the problem's message, reported by
//! [`REPORTING_CONTROLLER`] with the node's name as instance. A refused or
//! failed post is logged and counted, and the task goes on.
//!
//! The `Recorder` makes a repeat (same Service, reason and reporter, within
//! six minutes) a series of the first Event: a problem that goes and comes
//! back is counted on one Event, which keeps the first occurrence's note.

use k8s_openapi::api::core::v1::Service;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client, Resource,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    problem::ServiceProblem,
    report::{EventOutcome, ProblemMetrics},
};

/// The `reportingController` of the agent's Events.
pub const REPORTING_CONTROLLER: &str = "lb-agent";
/// The Events' `action`: what the agent was doing for the Service.
pub const EVENT_ACTION: &str = "Programming";
/// The (API group, resource) of the Events the agent posts: RBAC must allow it.
pub const EVENT_RESOURCE: (&str, &str) = ("events.k8s.io", "events");
/// The verbs the `Recorder` uses on Events: `create`, and `patch` for a series.
pub const EVENT_VERBS: [&str; 2] = ["create", "patch"];
/// The verb the poster uses on Services (to find the uid of the one concerned).
pub const SERVICE_LOOKUP_VERB: &str = "get";
/// How many Events may wait to be posted; more are dropped.
pub const QUEUE: usize = 256;
/// The longest note the Events API takes, in bytes.
const MAX_NOTE: usize = 1024;

/// What became of a problem offered to the sink.
#[derive(Debug)]
pub enum Offered {
    /// Queued for posting.
    Queued,
    /// The queue was full: not posted.
    Full,
    /// The posting task has ended.
    Closed,
}

/// The queue to the task posting Events.
#[derive(Clone, Debug)]
pub struct EventSink {
    queue: mpsc::Sender<ServiceProblem>,
}

impl EventSink {
    /// Starts the posting task (in the current Tokio runtime), reporting as
    /// `node`, with a queue of `capacity`.
    #[must_use]
    pub fn start(client: Client, node: &str, capacity: usize, metrics: ProblemMetrics) -> Self {
        let (queue, problems) = mpsc::channel(capacity.max(1));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTING_CONTROLLER.into(),
                instance: Some(node.into()),
            },
        );
        tokio::spawn(post_all(problems, client, recorder, metrics));
        Self { queue }
    }

    /// Queues a problem for posting, without waiting.
    #[must_use]
    pub fn offer(&self, problem: ServiceProblem) -> Offered {
        match self.queue.try_send(problem) {
            Ok(()) => Offered::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offered::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offered::Closed,
        }
    }
}

/// Posts each queued problem in turn until the sink is dropped.
async fn post_all(
    mut problems: mpsc::Receiver<ServiceProblem>,
    client: Client,
    recorder: Recorder,
    metrics: ProblemMetrics,
) {
    while let Some(problem) = problems.recv().await {
        match post(&client, &recorder, &problem).await {
            Ok(true) => metrics.count_event(EventOutcome::Posted),
            Ok(false) => debug!("Service {} is gone: no Event", problem.service),
            Err(e) => {
                metrics.count_event(EventOutcome::Failed);
                warn!("posting an Event for Service {}: {e}", problem.service);
            }
        }
    }
}

/// Posts one problem's Event; `false` when the Service no longer exists.
async fn post(
    client: &Client,
    recorder: &Recorder,
    problem: &ServiceProblem,
) -> Result<bool, kube::Error> {
    let services: Api<Service> = Api::namespaced(client.clone(), &problem.service.namespace);
    let Some(service) = services.get_opt(&problem.service.name).await? else {
        return Ok(false);
    };
    let event = event_of(problem);
    recorder.publish(&event, &service.object_ref(&())).await?;
    Ok(true)
}

/// The Event of a problem.
fn event_of(problem: &ServiceProblem) -> Event {
    Event {
        type_: EventType::Warning,
        reason: problem.reason.as_str().into(),
        note: Some(truncate(&problem.message, MAX_NOTE).into()),
        action: EVENT_ACTION.into(),
        secondary: None,
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ident::ObjectName, problem::ProblemReason};

    #[test]
    fn a_problem_becomes_a_warning_with_its_reason_and_a_bounded_note() {
        let problem = ServiceProblem {
            service: ObjectName {
                namespace: "default".into(),
                name: "web".into(),
            },
            reason: ProblemReason::Capacity,
            message: "é".repeat(600),
        };
        let event = event_of(&problem);
        assert_eq!(event.type_, EventType::Warning);
        assert_eq!(event.reason, "CapacityExceeded");
        let note = event.note.unwrap();
        assert_eq!(note.len(), 1024);
        assert!(note.chars().all(|c| c == 'é'));
        assert_eq!(truncate("abc", 1024), "abc");
    }
}

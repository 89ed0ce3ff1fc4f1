//! Events about Services that cannot be programmed as asked, posted by the
//! reporter through kube-rs' `Recorder` to the test API server: a Warning
//! on the Service, once while the problem lasts, and a reporter that never
//! waits and goes on when the server refuses or is down.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use lb_tests::apiserver::TestApiServer;
use lb_userspace::{
    ident::ObjectName,
    problem::{ProblemReason, ServiceProblem},
    report::{EventOutcome, ProblemMetrics, Reporter},
    source::events::{EventSink, QUEUE, REPORTING_CONTROLLER},
};

use super::{run, service, WAIT};

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

/// Waits until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "after {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CONFLICT: &str = "frontend 10.96.0.10:53/UDP is held by kube-system/kube-dns";

#[test]
fn a_lasting_problem_gets_one_warning_event_on_its_service() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    run(&server.clone(), |source| async move {
        let metrics = ProblemMetrics::default();
        let sink = EventSink::start(source.client.clone(), "node1", QUEUE, metrics.clone());
        let mut reporter = Reporter::new(metrics.clone(), Some(sink));
        let conflict = problem("web", ProblemReason::FrontendConflict, CONFLICT);
        // The Service of this one does not exist: no Event.
        let orphan = problem("gone", ProblemReason::UnsupportedPort, "SCTP port skipped");
        for _ in 0..5 {
            reporter.observe(&[conflict.clone(), orphan.clone()]);
        }
        eventually("one Event posted", || {
            metrics.events(EventOutcome::Posted) == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let events = server.events();
        assert_eq!(events.len(), 1, "once while it lasts: {events:#?}");
        assert_eq!(metrics.events(EventOutcome::Posted), 1);
        assert_eq!(metrics.current(ProblemReason::FrontendConflict), 1);
        let event = &events[0];
        let web: Service = kube::Api::namespaced(source.client.clone(), "default")
            .get("web")
            .await
            .unwrap();
        let regarding = &event["regarding"];
        assert_eq!(regarding["kind"], "Service");
        assert_eq!(regarding["apiVersion"], "v1");
        assert_eq!(regarding["namespace"], "default");
        assert_eq!(regarding["name"], "web");
        assert_eq!(
            regarding["uid"].as_str(),
            web.metadata.uid.as_deref(),
            "the uid `kubectl describe` matches Events by"
        );
        assert_eq!(event["metadata"]["namespace"], "default");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "FrontendConflict");
        assert_eq!(event["note"], CONFLICT);
        assert_eq!(event["reportingController"], REPORTING_CONTROLLER);
        assert_eq!(event["reportingInstance"], "node1");
        assert!(event["series"].is_null());

        // Gone, then back: posted again, as a series of the same Event.
        reporter.observe(&[]);
        assert_eq!(metrics.current(ProblemReason::FrontendConflict), 0);
        reporter.observe(std::slice::from_ref(&conflict));
        eventually("the second occurrence posted", || {
            metrics.events(EventOutcome::Posted) == 2
        })
        .await;
        let events = server.events();
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0]["series"]["count"], 2, "{events:#?}");
    });
}

#[test]
fn refused_or_unreachable_the_reporter_never_waits_and_goes_on() {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server.apply(&service("db", "10.96.0.11")).unwrap();
    run(&server.clone(), |source| async move {
        let metrics = ProblemMetrics::default();
        let sink = EventSink::start(source.client.clone(), "node1", 2, metrics.clone());
        let mut reporter = Reporter::new(metrics.clone(), Some(sink));
        // Refused (no RBAC for Events): counted as failed, nothing kept.
        server.set_events_forbidden(true);
        reporter.observe(&[problem("web", ProblemReason::Capacity, "map full")]);
        eventually("the refusal counted", || {
            metrics.events(EventOutcome::Failed) == 1
        })
        .await;
        assert!(server.events().is_empty());
        server.set_events_forbidden(false);

        // Down: the poster retries its one Event, the queue fills, and the
        // rest are dropped at once (counted) while the syncs go on.
        server.set_down(true);
        let many: Vec<ServiceProblem> = (0..50)
            .map(|i| problem("db", ProblemReason::UnsupportedPort, &format!("port {i}")))
            .collect();
        let started = Instant::now();
        for n in 1..=many.len() {
            reporter.observe(&many[..n]);
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "observing waited: {:?}",
            started.elapsed()
        );
        assert!(metrics.events(EventOutcome::Dropped) >= 40, "queue of 2");
        assert_eq!(metrics.current(ProblemReason::UnsupportedPort), 50);
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.set_down(false);
        // Back: what was queued is posted, and so are new problems.
        eventually("the queued Events posted after the outage", || {
            metrics.events(EventOutcome::Posted) + metrics.events(EventOutcome::Dropped) == 50
        })
        .await;
        reporter.observe(&[problem("web", ProblemReason::FrontendConflict, CONFLICT)]);
        eventually("the conflict posted after the outage", || {
            server
                .events()
                .iter()
                .any(|e| e["reason"] == "FrontendConflict" && e["regarding"]["name"] == "web")
        })
        .await;
        let posted = metrics.events(EventOutcome::Posted);
        let dropped = metrics.events(EventOutcome::Dropped);
        assert_eq!(posted + dropped, 51, "each problem posted or dropped");
    });
}

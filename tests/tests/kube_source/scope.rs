//! What the source watches: not the Services (and slices) of another proxy
//! or of headless Services, as kube-proxy; an object that gains or loses
//! such a label leaves or joins the model. And lists longer than a page.

use std::{sync::Arc, time::Instant};

use lb_tests::apiserver::TestApiServer;
use lb_userspace::source::kube::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, SERVICE_SELECTOR};

use super::{run, service, slice, state, until, WAIT, WEB};

/// `service(name, ip)` with `labels` (a YAML flow mapping's entries).
fn labelled(name: &str, ip: &str, labels: &str) -> String {
    service(name, ip).replace(
        "namespace: default}",
        &format!("namespace: default, labels: {{{labels}}}}}"),
    )
}

/// A label that takes a Service out of our hands: it is not in the model
/// from the start, leaves when it gains the label, and comes back when it
/// loses it.
fn a_label_takes_the_service_out(label: &str, value: &str) {
    let server = Arc::new(TestApiServer::start().unwrap());
    server.apply(&service("web", "10.96.0.10")).unwrap();
    server
        .apply(&slice("web", &["10.244.1.2", "10.244.1.3"]))
        .unwrap();
    let entry = format!("\"{label}\": \"{value}\"");
    server
        .apply(&labelled("other", "10.96.0.20", &entry))
        .unwrap();
    server.apply(&slice("other", &["10.244.1.7"])).unwrap();
    let label = label.to_string();
    run(&server.clone(), |mut source| async move {
        until(&mut source, &[WEB]).await;
        for kind in ["services", "endpointslices"] {
            assert!(
                server.log().iter().any(|uri| uri.contains(kind)
                    && uri.contains("watch=true")
                    && uri.contains("labelSelector=")),
                "the {kind} watch has the selector: {:#?}",
                server.log()
            );
        }
        // Gains the label: the watch sends it as DELETED.
        server
            .apply(&labelled("web", "10.96.0.10", &entry))
            .unwrap();
        until(&mut source, &[]).await;
        // Loses it: ADDED again.
        server.apply(&service("web", "10.96.0.10")).unwrap();
        until(&mut source, &[WEB]).await;
        // The other Service's label goes: it is ours now.
        server.apply(&service("other", "10.96.0.20")).unwrap();
        until(
            &mut source,
            &["default/other 10.96.0.20:80/TCP -> 10.244.1.7:8080", WEB],
        )
        .await;
        // A changed value of the label counts the same as any value.
        let entry = format!("\"{label}\": \"changed\"");
        server
            .apply(&labelled("other", "10.96.0.20", &entry))
            .unwrap();
        until(&mut source, &[WEB]).await;
    });
}

#[test]
fn services_of_another_proxy_are_not_ours() {
    a_label_takes_the_service_out(SERVICE_PROXY_NAME_LABEL, "other");
}

#[test]
fn headless_labelled_services_are_not_ours() {
    a_label_takes_the_service_out(HEADLESS_LABEL, "");
}

#[test]
fn the_selector_is_kube_proxys() {
    assert_eq!(
        SERVICE_SELECTOR,
        "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
    );
}

/// More Services than kube-rs' watcher lists in a page (500): the list
/// comes in pages, all of them reach the model, and the watch goes on from
/// the list's resourceVersion.
#[test]
fn a_list_longer_than_a_page_is_read_whole() {
    const SERVICES: usize = 1_201;
    let server = Arc::new(TestApiServer::start().unwrap());
    for i in 0..SERVICES {
        let ip = format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250);
        server.apply(&service(&format!("s{i}"), &ip)).unwrap();
    }
    run(&server.clone(), |mut source| async move {
        let started = Instant::now();
        while state(&mut source).len() < SERVICES {
            assert!(started.elapsed() < WAIT, "not every Service listed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let pages: Vec<String> = server
            .log()
            .into_iter()
            .filter(|uri| uri.starts_with("/api/v1/services?") && !uri.contains("watch=true"))
            .collect();
        assert_eq!(pages.len(), 3, "three pages of 500: {pages:#?}");
        assert!(pages[0].contains("limit=500"), "{pages:#?}");
        assert!(
            pages[1..].iter().all(|p| p.contains("continue=")),
            "{pages:#?}"
        );
        // Changes after the list arrive through the watch.
        server.apply(&service("late", "10.96.9.9")).unwrap();
        let started = Instant::now();
        while state(&mut source).len() < SERVICES + 1 {
            assert!(started.elapsed() < WAIT, "the watch after the pages");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}

/// kube-rs' `Api::list` with a page size: each page holds at most that
/// many, carries the first page's resourceVersion and a continue token
/// until the last; the pages joined are the list at the first page (a
/// Service created between pages is not in them). A token from before a
/// compaction (or one never given) is `410 Gone` with a Status, as the
/// real server answers.
#[test]
fn api_list_pages_join_into_one_consistent_list() {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, ListParams};

    let server = Arc::new(TestApiServer::start().unwrap());
    for i in 0..5 {
        server
            .apply(&service(&format!("s{i}"), &format!("10.96.0.{}", 10 + i)))
            .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = kube::Config::new(server.url().parse().unwrap());
        let api = Api::<Service>::all(kube::Client::try_from(config).unwrap());
        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let rv = first.metadata.resource_version.clone().unwrap();
        server.apply(&service("late", "10.96.0.99")).unwrap();
        let mut names: Vec<String> = first
            .items
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        let mut token = first.metadata.continue_.clone();
        let mut pages = 1;
        while let Some(t) = token.filter(|t| !t.is_empty()) {
            let page = api
                .list(&ListParams::default().limit(2).continue_token(&t))
                .await
                .unwrap();
            assert!(page.items.len() <= 2);
            assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
            names.extend(page.items.iter().map(|s| s.metadata.name.clone().unwrap()));
            token = page.metadata.continue_;
            pages += 1;
        }
        assert_eq!(pages, 3, "5 Services in pages of 2");
        assert_eq!(
            names,
            ["s0", "s1", "s2", "s3", "s4"],
            "joined, without the late one"
        );
        let whole = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(whole.items.len(), 6, "a new list has it");
        assert!(whole.metadata.continue_.is_none_or(|t| t.is_empty()));

        let first = api.list(&ListParams::default().limit(2)).await.unwrap();
        server.compact();
        let stale = first.metadata.continue_.unwrap();
        for token in [stale.as_str(), "never-given"] {
            match api
                .list(&ListParams::default().limit(2).continue_token(token))
                .await
            {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(
                        (status.code, status.reason.as_str()),
                        (410, "Expired"),
                        "{status:?}"
                    );
                }
                other => panic!("{token}: expected 410 Gone, got {other:?}"),
            }
        }
    });
}

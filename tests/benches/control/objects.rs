//! The objects the control bench serves: the Services of 10 endpoints,
//! and the Service whose one endpoint the changes move.

use std::net::Ipv4Addr;

use lb_tests::apiserver::TestApiServer;

use crate::burst;

/// The EndpointSlice of "lat" (the Service the changes move): endpoint `ip`.
pub fn slice(ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: lat-1, namespace: default, labels: {{kubernetes.io/service-name: lat}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n"
    )
}

/// Service `name` at cluster IP `ip`, port 80.
fn service_yaml(name: &str, ip: Ipv4Addr) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n")
}

/// The EndpointSlice of service number `i`: ten ready endpoints.
fn slice_yaml(service: &str, i: u32) -> String {
    slice_yaml_at(service, burst::endpoint_base(i, 0))
}

/// The EndpointSlice of `service`: ten ready endpoints from `base` on.
pub fn slice_yaml_at(service: &str, base: u32) -> String {
    let endpoints: Vec<String> = (0..10)
        .map(|k| {
            format!(
                "{{addresses: [\"{}\"], conditions: {{ready: true}}}}",
                Ipv4Addr::from(base + k)
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

/// A test API server holding `extra` Services of 10 endpoints and the
/// Service the changes move ("lat", one endpoint).
pub fn seeded(extra: u32) -> TestApiServer {
    let server = TestApiServer::start().expect("test API server");
    for i in 0..extra {
        server
            .apply(&service_yaml(&format!("s{i}"), burst::service_ip(i)))
            .unwrap();
        server.apply(&slice_yaml(&format!("s{i}"), i)).unwrap();
    }
    server
        .apply(&service_yaml("lat", Ipv4Addr::new(10, 96, 0, 60)))
        .unwrap();
    server.apply(&slice("10.244.3.1")).unwrap();
    server
}

//! `lb-agent`: the load balancer's node agent.

fn main() {}

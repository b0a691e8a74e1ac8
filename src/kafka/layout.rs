//! Follows the served topics' layout in the cluster: partitions a topic gains are
//! served from their first record, and a deleted topic's subscriptions end with an
//! error instead of waiting for records that will never come.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::cluster::Cluster;
use crate::router::Router;

/// Reads the cluster's metadata every `every` until the router is dropped.
pub fn spawn_watch(cluster: Cluster, router: &Arc<Router>, every: Duration) {
    let router = Arc::downgrade(router);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(router) = Weak::upgrade(&router) else {
                return;
            };
            match cluster.layout().await {
                Ok(layout) => apply(&router, &layout),
                // Unreachable: ingest reports it; the layout is looked at again next time.
                Err(e) => tracing::debug!(error = %e, "topic layout: metadata unavailable"),
            }
        }
    });
}

/// Grows or retires each served topic as the cluster's metadata says.
fn apply(router: &Router, layout: &std::collections::HashMap<String, Option<i32>>) {
    for route in router.topics().filter(|r| !r.is_deleted()) {
        match layout.get(&**route.name()) {
            None => {
                if router.mark_deleted(route) {
                    tracing::warn!(topic = %route.name(), "topic deleted from the cluster: its subscriptions end with `topic_deleted`");
                }
            }
            Some(Some(count)) => {
                let before = route.partitions();
                if router.grow(route, *count) {
                    tracing::info!(topic = %route.name(), from = before, to = count, "topic gained partitions: serving them from their first record");
                }
            }
            // Listed with an error (no leader, say): not gone; look again next time.
            Some(None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::TopicSpec;
    use std::collections::HashMap;

    #[test]
    fn grows_retires_and_ignores_errored_topics() {
        let router = Router::new(
            vec![
                TopicSpec::json("a", vec![5]),
                TopicSpec::json("b", vec![0, 0]),
                TopicSpec::json("c", vec![0]),
            ],
            1024,
        );
        let layout = HashMap::from([("a".to_string(), Some(3)), ("c".to_string(), None)]);
        let before = router.layout_version();
        apply(&router, &layout);
        let a = router.topic("a").expect("a");
        assert_eq!(a.partitions(), 3);
        assert_eq!(
            a.live_offset(0),
            Some(5),
            "existing partitions keep their position"
        );
        assert_eq!(
            a.live_offset(2),
            Some(0),
            "new ones start at their first record"
        );
        assert!(router.topic("b").is_some_and(|b| b.is_deleted()));
        assert!(
            router.topic("c").is_some_and(|c| !c.is_deleted()),
            "an errored topic is not gone"
        );
        assert_ne!(router.layout_version(), before);
        // Nothing changes a second time; fewer partitions never shrink a topic.
        let version = router.layout_version();
        let layout = HashMap::from([("a".to_string(), Some(1)), ("c".to_string(), Some(1))]);
        apply(&router, &layout);
        assert_eq!(router.layout_version(), version);
        assert_eq!(a.partitions(), 3);
    }
}

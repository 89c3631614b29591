//! Every dataset's table: the walk from a response's items to one row, and each column with its
//! type and the JSON it is read from. Column names follow the public sample client's tables
//! (domain doc 7.3), with `timestamptz` everywhere, the poll time in `poll_timestamp`, and the
//! fields that client drops kept (`active_private_calls`, `total_nodes`, `unavailability_reason`,
//! every failure reason).

use tributary_sdk::config::FieldType::{Bool, Float, Int, String as Str, Timestamp as Ts};

use super::mapping::Conv::{self, Commas, Count, Id, Lines, Text, Time};
use super::mapping::Elements::{At, EachKey, FirstOf, Items};
use super::mapping::Read::{Carried, Field, Host, Key, Org, PollTime, Trigger};
use super::mapping::{col, step, Column, Table};

const POLL: Column = col("poll_timestamp", Ts, PollTime);
const ORG: Column = col("organization_id", Str, Org);
const FROM: Column = col("from_timestamp", Ts, Carried("from", Time));
const TO: Column = col("to_timestamp", Ts, Carried("to", Time));
const INTERVAL: Column = col("aggregation_interval", Str, Carried("aggregationInterval", Text));

pub const ORGANIZATIONS: Table = Table {
    output: "organizations",
    walk: &[step("org", Items).needs("an organization", &["id"], Id)],
    columns: &[
        POLL,
        col("organization_id", Str, Field("org", &["id"], Id)),
        col("organization_name", Str, Field("org", &["displayName"], Text)),
        col("create_timestamp", Ts, Field("org", &["created"], Time)),
    ],
};

/// `/videoMesh/clusters`, one row per cluster × node.
pub const CLUSTER_DETAILS: Table = Table {
    output: "cluster_details",
    walk: &[step("cluster", Items).needs("a cluster", &["clusterId"], Id), step("node", At(&["nodes"]))],
    columns: &[
        POLL,
        ORG,
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
        col("node_id", Str, Field("node", &["nodeId"], Id)),
        col("release_channel", Str, Field("cluster", &["releaseChannel"], Text)),
        col("upgrade_schedule_days", Str, Field("cluster", &["upgradeSchedule", "scheduleDays"], Commas)),
        col("upgrade_schedule_time", Str, Field("cluster", &["upgradeSchedule", "scheduleTime"], Text)),
        col("upgrade_schedule_timezone", Str, Field("cluster", &["upgradeSchedule", "scheduleTimeZone"], Text)),
        col("upgrade_pending", Bool, Field("cluster", &["upgradeSchedule", "upgradePending"], Conv::Bool)),
        col("next_upgrade_timestamp", Ts, Field("cluster", &["upgradeSchedule", "nextUpgradeTime"], Time)),
    ],
};

/// The same response, one row per node.
pub const NODE_DETAILS: Table = Table {
    output: "node_details",
    walk: CLUSTER_DETAILS.walk,
    columns: &[
        POLL,
        ORG,
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("node_id", Str, Field("node", &["nodeId"], Id)),
        col("host_name", Str, Host("node")),
        col("deployment_type", Str, Field("node", &["deploymentType"], Text)),
        col("country_code", Str, Field("node", &["location", "countryCode"], Text)),
        col("city", Str, Field("node", &["location", "city"], Text)),
        col("timezone", Str, Field("node", &["location", "timeZone"], Text)),
    ],
};

pub const CLUSTER_AVAILABILITY: Table = Table {
    output: "cluster_availability",
    walk: &[
        step("cluster", Items),
        step("segment", At(&["availabilitySegments"])).needs("a segment", &["segmentStartTime", "segmentEndTime"], Time),
    ],
    columns: &[
        POLL,
        ORG,
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
        col("online_nodes", Int, Field("segment", &["noOfOnlineNodes"], Count)),
        col("offline_nodes", Int, Field("segment", &["noOfOfflineNodes"], Count)),
        col("total_nodes", Int, Field("segment", &["totalNodes"], Count)),
        col("availability", Str, Field("segment", &["availability"], Text)),
        col("start_timestamp", Ts, Field("segment", &["segmentStartTime"], Time)),
        col("end_timestamp", Ts, Field("segment", &["segmentEndTime"], Time)),
    ],
};

pub const NODE_AVAILABILITY: Table = Table {
    output: "node_availability",
    walk: &[
        step("node", Items),
        step("segment", At(&["availabilitySegments"])).needs("a segment", &["segmentStartTime", "segmentEndTime"], Time),
    ],
    columns: &[
        POLL,
        ORG,
        col("cluster_id", Str, Field("node", &["clusterId"], Id)),
        col("cluster_name", Str, Field("node", &["clusterName"], Text)),
        col("node_id", Str, Field("node", &["nodeId"], Id)),
        col("host_name", Str, Host("node")),
        col("availability", Str, Field("segment", &["availability"], Text)),
        col("unavailability_reason", Str, Field("segment", &["unAvailabilityReason"], Text)),
        col("start_timestamp", Ts, Field("segment", &["segmentStartTime"], Time)),
        col("end_timestamp", Ts, Field("segment", &["segmentEndTime"], Time)),
    ],
};

/// The 10-minute buckets: each item is one, stamped by its `timestamp`.
const BUCKET: super::mapping::Step = step("bucket", Items).needs("a bucket", &["timestamp"], Time);

pub const UTILIZATION: Table = Table {
    output: "utilization",
    walk: &[BUCKET, step("cluster", At(&["clusters"]))],
    columns: &[
        POLL,
        ORG,
        FROM,
        TO,
        INTERVAL,
        col("measure_timestamp", Ts, Field("bucket", &["timestamp"], Time)),
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
        col("peak_cpu", Float, Field("cluster", &["utilizationMetrics", "peakCpu"], Conv::Float)),
        col("avg_cpu", Float, Field("cluster", &["utilizationMetrics", "avgCpu"], Conv::Float)),
        col("active_calls", Int, Field("cluster", &["utilizationMetrics", "activeCalls"], Count)),
        col("active_private_calls", Int, Field("cluster", &["utilizationMetrics", "activePrivateCalls"], Count)),
    ],
};

pub const CLOUD_OVERFLOW: Table = Table {
    output: "cloud_overflow",
    walk: &[BUCKET, step("detail", At(&["overflowDetails"]))],
    columns: &[
        POLL,
        ORG,
        INTERVAL,
        FROM,
        TO,
        col("overflow_timestamp", Ts, Field("bucket", &["timestamp"], Time)),
        col("overflow_reason", Str, Field("detail", &["overflowReason"], Text)),
        col("overflow_count", Int, Field("detail", &["overflowCount"], Count)),
        col("remediation", Str, Field("detail", &["possibleRemediation"], Text)),
    ],
};

pub const CALL_REDIRECTS: Table = Table {
    output: "call_redirects",
    walk: &[BUCKET, step("cluster", At(&["clusters"])), step("detail", At(&["redirectDetails"]))],
    columns: &[
        POLL,
        ORG,
        INTERVAL,
        FROM,
        TO,
        col("redirect_timestamp", Ts, Field("bucket", &["timestamp"], Time)),
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
        col("redirect_reason", Str, Field("detail", &["redirectReason"], Text)),
        col("redirect_count", Int, Field("detail", &["redirectCount"], Count)),
        col("remediation", Str, Field("detail", &["possibleRemediation"], Text)),
    ],
};

pub const CLIENT_TYPES: Table = Table {
    output: "client_types",
    walk: &[BUCKET, step("cluster", At(&["clusters"])), step("detail", At(&["clientTypeDistributionDetails"]))],
    columns: &[
        POLL,
        ORG,
        INTERVAL,
        FROM,
        TO,
        col("distribution_timestamp", Ts, Field("bucket", &["timestamp"], Time)),
        col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
        col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
        col("device_type", Str, Field("detail", &["deviceType"], Text)),
        col("device_count", Int, Field("detail", &["count"], Count)),
        col("device_description", Str, Field("detail", &["description"], Text)),
    ],
};

/// A test result table's columns: the window, the org and the node tested, then the given ones.
macro_rules! tested_node_then {
    ($($rest:expr),* $(,)?) => {
        &[
            POLL,
            FROM,
            TO,
            ORG,
            col("cluster_id", Str, Field("cluster", &["clusterId"], Id)),
            col("cluster_name", Str, Field("cluster", &["clusterName"], Text)),
            col("node_id", Str, Field("node", &["nodeId"], Id)),
            col("host_name", Str, Host("node")),
            col("ip_address", Str, Field("node", &["ipAddress"], Text)),
            $($rest),*
        ]
    };
}

pub const REACHABILITY: Table = Table {
    output: "reachability",
    walk: &[
        step("item", Items),
        step("cluster", At(&["clusters"])),
        step("node", At(&["nodes"])),
        step("destination", At(&["testResults"])),
        step("run", At(&["stunResults"])).needs("a reachability result", &["timestamp"], Time),
        step("port", EachKey(&["udp", "tcp"])),
    ],
    columns: tested_node_then![
        col("destination_cluster", Str, Field("destination", &["destinationCluster"], Text)),
        col("test_timestamp", Ts, Field("run", &["timestamp"], Time)),
        col("test_id", Str, Field("run", &["id"], Id)),
        col("trigger_type", Str, Field("run", &["triggerType"], Text)),
        col("protocol", Str, Key),
        col("port", Int, Field("port", &["port"], Count)),
        col("reachability", Bool, Field("port", &["reachable"], Conv::Bool)),
        col("destination_ip_address", Str, Field("port", &["ipAddress"], Text)),
    ],
};

pub const MEDIA_HEALTH: Table = Table {
    output: "media_health",
    walk: &[
        step("item", Items),
        step("cluster", At(&["clusters"])),
        step("node", At(&["nodes"])),
        step("run", At(&["mhmTestResults"])).needs("a media health result", &["timestamp"], Time),
        step("test", At(&["testResults"])),
    ],
    columns: tested_node_then![
        col("test_timestamp", Ts, Field("run", &["timestamp"], Time)),
        col("test_id", Str, Field("run", &["id"], Id)),
        col("trigger_type", Str, Trigger("run")),
        col("test_name", Str, Field("test", &["testName"], Text)),
        col("test_result", Str, Field("test", &["testResult"], Text)),
        col("failure_reason", Str, Field("test", &["failureReason"], Text)),
    ],
};

pub const NETWORK_TESTS: Table = Table {
    output: "network_tests",
    walk: &[
        step("item", Items),
        step("cluster", At(&["clusters"])),
        step("node", At(&["nodes"])),
        step("run", At(&["testResults"])).needs("a network test result", &["timestamp"], Time),
        step("check", FirstOf(&[&["result"], &["results"]])),
        step("service", At(&["results"])),
    ],
    columns: tested_node_then![
        col("test_timestamp", Ts, Field("run", &["timestamp"], Time)),
        col("test_id", Str, Field("run", &["id"], Id)),
        col("trigger_type", Str, Field("run", &["triggerType"], Text)),
        col("test_type", Str, Field("check", &["type"], Text)),
        col("service_type", Str, Field("service", &["serviceType"], Text)),
        col("test_result", Str, Field("service", &["testResult"], Text)),
        col("failure_reason", Str, Field("service", &["failureDetails", "possibleFailureReason"], Lines)),
        col("possible_remediation", Str, Field("service", &["failureDetails", "possibleRemediation"], Lines)),
    ],
};

/// Every table, in the order the outputs are declared.
pub const ALL: [&Table; 12] = [
    &ORGANIZATIONS,
    &CLUSTER_DETAILS,
    &NODE_DETAILS,
    &CLUSTER_AVAILABILITY,
    &NODE_AVAILABILITY,
    &UTILIZATION,
    &CLOUD_OVERFLOW,
    &CALL_REDIRECTS,
    &CLIENT_TYPES,
    &REACHABILITY,
    &MEDIA_HEALTH,
    &NETWORK_TESTS,
];

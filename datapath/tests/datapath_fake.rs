//! The shared behavioural suite against the recording in-memory fake.

use datapath::api::EndpointAttachment;
use datapath::fake::FakeDatapath;
use datapath::testing::datapath_behaviour_tests;

datapath_behaviour_tests!(
    datapath = FakeDatapath::new(),
    attachment = |endpoint| EndpointAttachment {
        endpoint,
        ifname: format!("lxc{endpoint}"),
        netns: None,
    },
);

//! PodProbeMarker: fans each marker's probes out into the NodePodProbe of every selected pod's
//! node, and marks pods with the results kruise-daemon reports there. Per namespace, in the
//! namespace's shard. The decisions are pure functions (`fanout`, `marking`, `index`).

pub mod controller;
pub mod fanout;
pub mod index;
pub mod marking;
pub mod recent;

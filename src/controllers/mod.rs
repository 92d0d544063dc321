//! Controllers: one folder each, pure planning plus the thin glue that plugs into the runtime.

pub mod demo;
pub mod imagepulljob;
pub mod nodeimage;
pub mod nodepodprobe;
pub mod nodes;
pub mod podprobemarker;
pub mod pods;
pub mod sidecarset;
pub mod update_sort;

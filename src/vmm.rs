//! The VM layer: QEMU's command line and QMP, one VM's life (`vm`), its
//! guest agent (`qga`) and serial console (`console`), the accelerator
//! probe, and the instances the daemon manages on top of them.
//! Nothing here knows about HTTP, TLS or who the caller is: the server
//! decides that and hands this layer checked values.

pub(crate) mod accel;
pub(crate) mod console;
pub(crate) mod instances;
pub(crate) mod qemu;
pub(crate) mod qga;
pub(crate) mod qmp;
pub(crate) mod vm;

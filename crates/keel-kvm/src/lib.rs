//! keel-kvm

//! Keel's virtual switch (to come).
#![no_std]

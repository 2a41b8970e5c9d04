//! Keel system description.
#![cfg_attr(not(feature = "std"), no_std)]

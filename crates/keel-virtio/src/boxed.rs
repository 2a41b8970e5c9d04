//! Boxed backends are backends: a VMM that picks backends at run time (a file on Linux, a
//! memory region on seL4) keeps one device type, `Block<Box<dyn BlockBackend>>`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::block::{BlockBackend, BlockError, GuestIoSlice, Vectored};
use crate::console::ConsoleOutput;
use crate::device::EventSource;
use crate::net::{NetBackend, NetError};
use crate::rng::{EntropyError, EntropySource};

impl<T: BlockBackend + ?Sized> BlockBackend for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        (**self).write_at(offset, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        (**self).discard(offset, len)
    }
    fn read_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        (**self).read_vectored_at(offset, bufs)
    }
    fn write_vectored_at(
        &mut self,
        offset: u64,
        bufs: &[GuestIoSlice],
    ) -> Result<Vectored, BlockError> {
        (**self).write_vectored_at(offset, bufs)
    }
}

impl<T: ConsoleOutput + ?Sized> ConsoleOutput for Box<T> {
    fn write(&mut self, bytes: &[u8]) {
        (**self).write(bytes)
    }
}

impl<T: EntropySource + ?Sized> EntropySource for Box<T> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        (**self).fill(buf)
    }
}

impl<T: NetBackend + ?Sized> NetBackend for Box<T> {
    fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        (**self).send(frame)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        (**self).recv(buf)
    }

    fn event_source(&self) -> Option<EventSource> {
        (**self).event_source()
    }

    fn backlogged(&self) -> bool {
        (**self).backlogged()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        (**self).counters()
    }
}

//! COM1 16550 UART at I/O port 0x3f8 (PVH under QEMU): 115200 8N1, polled transmit.

use crate::arch::{inb, outb};

const BASE: u16 = 0x3f8;
const THR: u16 = 0; // transmit holding register
const IER: u16 = 1;
const FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_THR_EMPTY: u8 = 0x20;

pub struct Com1;

impl Com1 {
    /// Program 115200 8N1, FIFOs on, interrupts off.
    pub fn init() -> Self {
        outb(BASE + IER, 0);
        outb(BASE + LCR, 0x80); // DLAB
        outb(BASE, 1); // divisor 1 = 115200
        outb(BASE + 1, 0);
        outb(BASE + LCR, 0x03); // 8N1
        outb(BASE + FCR, 0xc7);
        outb(BASE + MCR, 0x03);
        Com1
    }

    fn put(&mut self, b: u8) {
        // Bounded wait: a missing UART reads 0xff (THR empty) so this never hangs.
        for _ in 0..100_000 {
            if inb(BASE + LSR) & LSR_THR_EMPTY != 0 {
                break;
            }
            crate::arch::pause();
        }
        outb(BASE + THR, b);
    }

    pub fn write_str(&mut self, s: &str) {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
    }
}

fn main() {
    eprintln!("usbdom: not written yet");
    std::process::exit(2);
}

//! The WAYSCloud emulator by hand: `cargo run --example wayscloud-emulator -- --port 8099
//! [--key KEY] [--feed FILE]`. Point banshare at it with `[feed] base_url =
//! "http://127.0.0.1:8099"` and the key in `/etc/banshare/api-key` (0600). `--feed` seeds
//! the live feed from a JSON array of items; without it, the feed is built from the
//! reports the emulator receives.

#[path = "../tests/support/emulator.rs"]
mod emulator;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut key, mut feed) = (8099u16, None, None);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--port" => port = value().parse().unwrap_or_else(|_| usage("--port takes a number")),
            "--key" => key = Some(value()),
            "--feed" => feed = Some(value()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let emu = emulator::Emulator::start_on(port);
    if let Some(k) = &key {
        emu.with(|s| s.keys = vec![k.clone()]);
    }
    match &feed {
        Some(path) => {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| usage(&format!("{path}: {e}")));
            let items: Vec<serde_json::Value> =
                serde_json::from_str(&text).unwrap_or_else(|e| usage(&format!("{path}: not a JSON array: {e}")));
            emu.with(|s| s.feed = emulator::FeedSource::Items(items));
        }
        None => emu.with(|s| s.feed = emulator::FeedSource::Reports),
    }
    let key = key.as_deref().unwrap_or(emulator::TEST_KEY);
    println!("WAYSCloud emulator on {} (key {key}); Ctrl-C stops it", emu.url());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("wayscloud-emulator: {problem}");
    }
    eprintln!("usage: wayscloud-emulator [--port 8099] [--key KEY] [--feed items.json]");
    std::process::exit(2)
}

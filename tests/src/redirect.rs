//! [`Redirector`]: a stand-in for a host a paglet has left. It answers every request with
//! 308 `moved` and a `Location` naming the same path and query on another URL, as a real
//! host does for `--forward-ttl`, and keeps the head of each request it answered, so a test
//! can see what a client sent it (the API key, say).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A listener on 127.0.0.1 that redirects everything to `target`; stops when dropped.
pub struct Redirector {
    /// Its own URL, `http://127.0.0.1:PORT`.
    pub url: String,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Redirector {
    /// Starts one that sends every request on to the same path under `target`.
    pub fn to(target: &str) -> Redirector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a redirector");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let target = target.trim_end_matches('/').to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (heads, stop) = (Arc::clone(&heads), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream
                        && let Ok(head) = redirect(stream, &target)
                    {
                        heads
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(head);
                    }
                }
            })
        };
        Redirector {
            url,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    /// The heads (request line and headers) of every request answered so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (head and body) and answers 308 to `target` + its path; returns the
/// head.
fn redirect(stream: TcpStream, target: &str) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let location = format!("{target}{path}");
    let json =
        format!(r#"{{"error":{{"code":"moved","message":"the paglet moved to {location}"}}}}"#);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: {location}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    stream.flush()?;
    Ok(head)
}

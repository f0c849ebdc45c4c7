//! [`guard`]: every call from the host into plugin code runs inside it, so an unwinding panic
//! (including one from serde or a `Drop`) becomes an error value instead of crossing the
//! boundary. Its panic hook lives in the library's own copy of std.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use crate::error::PagletError;

thread_local! {
    static IN_GUARD: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Routes panic messages raised inside a guarded call to the guard (and from there to the
/// host's log) instead of stderr. Panics elsewhere go to the previous hook. Installed in this
/// library's own copy of std, once.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = IN_GUARD.try_with(Cell::get).unwrap_or(false);
            if !guarded {
                return previous(info);
            }
            let mut text = payload_text(info.payload());
            if let Some(location) = info.location() {
                text = format!("{text} at {}:{}", location.file(), location.line());
            }
            let _ = LAST_PANIC.try_with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Runs `f`, turning an unwinding panic into [`PagletError::Panicked`] naming `what` (built
/// only when needed: this is on every message's path). The panic message also goes to `log`
/// when given (the instance's context).
pub(crate) fn guard<T>(
    what: impl FnOnce() -> String,
    log: Option<&dyn Fn(&str)>,
    f: impl FnOnce() -> Result<T, PagletError>,
) -> Result<T, PagletError> {
    install_panic_hook();
    let outer = IN_GUARD.replace(true);
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_GUARD.set(outer);
    result.unwrap_or_else(|payload| {
        let detail = LAST_PANIC.take().unwrap_or_else(|| payload_text(&*payload));
        // A payload whose own `Drop` panics would unwind from here; leaking it is safer.
        std::mem::forget(payload);
        let message = format!("{} panicked: {detail}", what());
        if let Some(log) = log {
            let _ = catch_unwind(AssertUnwindSafe(|| log(&message)));
        }
        Err(PagletError::Panicked(message))
    })
}

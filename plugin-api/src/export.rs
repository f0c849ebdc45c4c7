//! Plugin side: `export_paglets!`, the class sets it declares, and the ordinary Rust behind
//! the generic shims in `abi.rs` ([`Exports`], `InstanceOps`).
//!
//! Every call from the host runs inside [`guard`], so nothing unwinds across the boundary.
//! `tracing` events emitted inside a call are forwarded to the host through the context of the
//! instance whose code runs, because a cdylib has its own copy of tracing's globals. One
//! subscriber serves every instance of the library: registering a `Dispatch` costs time
//! proportional to the dispatchers alive, so one per instance made creating a paglet
//! O(paglets).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tracing::Dispatch;
use tracing_core::{Event, Metadata, field::Field, span};

use crate::abi::{Exports, HostLink, InstanceBox, InstanceOps};
use crate::context::{Context, ContextInner};
use crate::describe::{ClassInfo, LibraryInfo};
use crate::error::PagletError;
use crate::guard::guard;
use crate::message::{Hook, Message};
use crate::paglet::Paglet;

/// Exports paglet types from a `cdylib`: generates the library's root module.
///
/// ```ignore
/// plugin_api::export_paglets!(Counter);
/// plugin_api::export_paglets!(Hello, Echo);
/// // The library name defaults to the crate name; it can be set:
/// plugin_api::export_paglets!(library = "greetings"; Hello, Echo);
/// ```
///
/// Call it once per library, at the crate root. Each type must implement [`Paglet`].
#[macro_export]
macro_rules! export_paglets {
    (library = $name:literal; $($ty:ident),+ $(,)?) => {
        $crate::__export_paglets!(@abi $crate::__private::PAGLETS_ABI; $name; $($ty),+);
    };
    ($($ty:ident),+ $(,)?) => {
        $crate::__export_paglets!(
            @abi $crate::__private::PAGLETS_ABI; ::core::env!("CARGO_CRATE_NAME"); $($ty),+
        );
    };
}

/// The expansion of [`export_paglets!`]; the `@abi` form lets test fixtures declare another
/// interface version.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_paglets {
    (@abi $abi:expr; $name:expr; $($ty:ident),+) => {
        #[doc(hidden)]
        pub struct __PagletsLibrary;

        impl $crate::__private::ClassSet for __PagletsLibrary {
            const ABI: u32 = $abi;
            fn library() -> ::std::string::String {
                ::std::string::String::from($name)
            }
            fn version() -> ::std::string::String {
                ::std::string::String::from(::core::env!("CARGO_PKG_VERSION"))
            }
            fn classes() -> ::std::vec::Vec<$crate::__private::ClassEntry> {
                ::std::vec![$($crate::__private::ClassEntry::of::<$ty>(::core::stringify!($ty))),+]
            }
        }

        // abi_stable's `ROOT_MODULE_LOADER_NAME`; a unit test in `abi.rs` pins the literal.
        #[doc(hidden)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static __PAGLETS_ROOT_MODULE: $crate::__private::LibHeader =
            $crate::__private::lib_header::<__PagletsLibrary>();
    };
}

thread_local! {
    /// The contexts of the instances whose code runs on this thread, innermost last (a
    /// paglet-to-paglet send may run the target's handler inside the sender's).
    static RUNNING: RefCell<Vec<Arc<ContextInner>>> = const { RefCell::new(Vec::new()) };
}

/// A set of paglet classes exported together; `export_paglets!` implements it.
#[doc(hidden)]
pub trait ClassSet: 'static {
    /// The interface version declared; only test fixtures change it.
    const ABI: u32 = crate::abi::PAGLETS_ABI;
    /// The library name, the first half of every class name.
    fn library() -> String;
    /// The library's version.
    fn version() -> String;
    /// The classes.
    fn classes() -> Vec<ClassEntry>;
}

/// One class of a [`ClassSet`]: its type name and the functions that serve it.
#[doc(hidden)]
pub struct ClassEntry {
    type_name: &'static str,
    description: &'static str,
    state_version: u32,
    template: fn() -> Result<String, PagletError>,
    create: fn(&str, &str, u32, HostLink) -> Result<InstanceBox, PagletError>,
}

impl ClassEntry {
    /// The entry for `P`, named `type_name` within its library.
    pub fn of<P: Paglet>(type_name: &'static str) -> ClassEntry {
        ClassEntry {
            type_name,
            description: P::DESCRIPTION,
            state_version: P::STATE_VERSION,
            template: template::<P>,
            create: create_instance::<P>,
        }
    }
}

/// A single paglet type as a class set; its library name is the crate the type lives in.
/// Only the harness uses it.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub struct Single<P>(std::marker::PhantomData<P>);

#[cfg(feature = "testing")]
impl<P: Paglet> ClassSet for Single<P> {
    fn library() -> String {
        let full = std::any::type_name::<P>();
        full.split("::").next().unwrap_or(full).to_string()
    }

    fn version() -> String {
        "0.0.0-in-process".into()
    }

    fn classes() -> Vec<ClassEntry> {
        let full = std::any::type_name::<P>();
        vec![ClassEntry::of::<P>(
            full.rsplit("::").next().unwrap_or(full),
        )]
    }
}

impl<L: ClassSet> Exports for L {
    const ABI: u32 = <L as ClassSet>::ABI;

    fn describe() -> Result<String, PagletError> {
        describe::<L>()
    }

    fn create(
        class: &str,
        state: &str,
        version: u32,
        host: HostLink,
    ) -> Result<InstanceBox, PagletError> {
        create::<L>(class, state, version, host)
    }
}

/// The library description the `describe` entry point returns, as JSON.
fn describe<L: ClassSet>() -> Result<String, PagletError> {
    let library = L::library();
    let classes = L::classes()
        .into_iter()
        .map(|entry| {
            let template = (entry.template)()?;
            let state_template = serde_json::from_str(&template)
                .map_err(|e| PagletError::Failed(format!("state template: {e}")))?;
            Ok(ClassInfo {
                class: format!("{library}::{}", entry.type_name),
                description: entry.description.to_string(),
                state_template,
                state_version: entry.state_version,
            })
        })
        .collect::<Result<Vec<_>, PagletError>>()?;
    let info = LibraryInfo {
        name: library,
        version: L::version(),
        classes,
    };
    serde_json::to_string(&info).map_err(|e| PagletError::Failed(format!("description: {e}")))
}

/// The `create` entry point: finds the class and builds an instance from its state.
fn create<L: ClassSet>(
    class: &str,
    state: &str,
    version: u32,
    host: HostLink,
) -> Result<InstanceBox, PagletError> {
    let library = L::library();
    let entry = L::classes()
        .into_iter()
        .find(|e| {
            class
                .strip_prefix(library.as_str())
                .and_then(|r| r.strip_prefix("::"))
                == Some(e.type_name)
        })
        .ok_or_else(|| PagletError::Failed(format!("library {library} has no class {class}")))?;
    (entry.create)(class, state, version, host)
}

/// The state template of `P`: its default, as JSON.
fn template<P: Paglet>() -> Result<String, PagletError> {
    serde_json::to_string(&P::default())
        .map_err(|e| PagletError::Failed(format!("default state does not serialize: {e}")))
}

/// Builds an instance of `P` from a state written by code with state version `version`
/// (see [`crate::paglet::restore`]); an empty state is the default.
fn create_instance<P: Paglet>(
    class: &str,
    state: &str,
    version: u32,
    host: HostLink,
) -> Result<InstanceBox, PagletError> {
    let ctx = Context::new(host, class);
    let paglet: P = if state.is_empty() {
        P::default()
    } else {
        let state: Value = serde_json::from_str(state)
            .map_err(|e| PagletError::InvalidArgs(format!("state for {class} is not JSON: {e}")))?;
        crate::paglet::restore(state, version).map_err(|e| match e {
            PagletError::InvalidArgs(m) => {
                PagletError::InvalidArgs(format!("state for {class}: {m}"))
            }
            other => other,
        })?
    };
    Ok(crate::abi::instance_box(Shim {
        paglet: Some(paglet),
        ctx,
    }))
}

/// One instance on the plugin side.
struct Shim<P: Paglet> {
    /// `Some` until dropped; taken in `Drop` so the paglet's own drop runs guarded.
    paglet: Option<P>,
    ctx: Context,
}

/// The library's one `tracing` dispatcher, forwarding to the running instance's context.
fn forward() -> &'static Dispatch {
    static FORWARD: OnceLock<Dispatch> = OnceLock::new();
    FORWARD.get_or_init(|| Dispatch::new(Forward))
}

/// Marks `ctx` as the running instance's context on this thread until dropped (on unwind
/// too).
struct Running;

impl Running {
    fn enter(ctx: &Context) -> Running {
        RUNNING.with_borrow_mut(|running| running.push(ctx.inner().clone()));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with_borrow_mut(|running| running.pop());
    }
}

impl<P: Paglet> Shim<P> {
    fn call<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut P, &Context) -> Result<T, PagletError>,
    ) -> Result<T, PagletError> {
        let Shim { paglet, ctx } = self;
        let what = || format!("{} ({}) in {what}", ctx.class(), ctx.id());
        let log = |message: &str| ctx.log(tracing::Level::ERROR, message);
        guard(what, Some(&log), || {
            let paglet = paglet
                .as_mut()
                .ok_or_else(|| PagletError::Failed("disposed".into()))?;
            let _running = Running::enter(ctx);
            tracing::dispatcher::with_default(forward(), || f(paglet, ctx))
        })
    }
}

impl<P: Paglet> InstanceOps for Shim<P> {
    fn handle(&mut self, kind: &str, args: &str) -> Result<String, PagletError> {
        self.call("handle_message", |paglet, ctx| {
            let args = if args.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(args)
                    .map_err(|e| PagletError::InvalidArgs(format!("args are not JSON: {e}")))?
            };
            let reply = paglet.handle_message(
                ctx,
                Message {
                    kind: kind.to_string(),
                    args,
                },
            )?;
            serde_json::to_string(&reply.0)
                .map_err(|e| PagletError::Failed(format!("reply does not serialize: {e}")))
        })
    }

    fn hook(&mut self, hook: Hook) -> Result<(), PagletError> {
        self.call(hook.name(), |paglet, ctx| match &hook {
            Hook::Created => paglet.created(ctx),
            Hook::Arrived(arrival) => paglet.arrived(ctx, arrival),
            Hook::Dispatching { to } => paglet.dispatching(ctx, to),
            Hook::Cloning => paglet.cloning(ctx),
            Hook::Deactivating => paglet.deactivating(ctx),
            Hook::Activated => paglet.activated(ctx),
            Hook::Disposing => paglet.disposing(ctx),
        })
    }

    fn state(&self) -> Result<String, PagletError> {
        let what = || {
            format!(
                "{} ({}) serialising its state",
                self.ctx.class(),
                self.ctx.id()
            )
        };
        let log = |message: &str| self.ctx.log(tracing::Level::ERROR, message);
        guard(what, Some(&log), || {
            let paglet = self
                .paglet
                .as_ref()
                .ok_or_else(|| PagletError::Failed("disposed".into()))?;
            serde_json::to_string(paglet)
                .map_err(|e| PagletError::Failed(format!("state does not serialize: {e}")))
        })
    }
}

impl<P: Paglet> Drop for Shim<P> {
    fn drop(&mut self) {
        if let Some(paglet) = self.paglet.take() {
            let what = || format!("{} ({}) while dropping", self.ctx.class(), self.ctx.id());
            let ctx = &self.ctx;
            let log = |message: &str| ctx.log(tracing::Level::ERROR, message);
            let _ = guard(what, Some(&log), || {
                drop(paglet);
                Ok(())
            });
        }
    }
}

/// Forwards `tracing` events from inside a paglet to the host through the context of the
/// instance running on this thread.
struct Forward;

impl tracing::Subscriber for Forward {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing_core::Interest {
        #[cfg(test)]
        tests::REGISTRATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing_core::Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = EventText::default();
        event.record(&mut text);
        let meta = event.metadata();
        // Cloned out first: logging must not hold the borrow (nothing re-enters, but a
        // borrow across a host call is a trap).
        if let Some(ctx) = RUNNING.with_borrow(|running| running.last().cloned()) {
            ctx.link.log(*meta.level(), meta.target(), &text.finish());
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl EventText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields.trim_start().to_string()
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl tracing_core::field::Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push_str(&format!(" {}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    /// Calls of [`Forward`]'s `register_callsite`: tracing makes one per callsite for every
    /// dispatcher registered, so it counts dispatcher registrations.
    pub(super) static REGISTRATIONS: AtomicUsize = AtomicUsize::new(0);

    #[cfg(feature = "testing")]
    mod with_harness {
        use std::sync::atomic::Ordering;

        use serde::{Deserialize, Serialize};
        use serde_json::{Value, json};

        use super::REGISTRATIONS;
        use crate::testing::PagletTest;
        use crate::{Context, Message, Paglet, PagletError, Reply};

        /// Logs around forwarding a message, so nested logs can be told apart.
        #[derive(Default, Serialize, Deserialize)]
        struct Chatty {
            said: u64,
        }

        impl Paglet for Chatty {
            fn handle_message(
                &mut self,
                ctx: &Context,
                msg: Message,
            ) -> Result<Reply, PagletError> {
                self.said += 1;
                tracing::info!("before {}", msg.kind);
                if let Some(to) = msg.args.get("to").and_then(Value::as_str) {
                    ctx.send(to, "inner", Value::Null)?;
                }
                tracing::info!("after {}", msg.kind);
                Reply::new(Value::Null)
            }
        }

        const CLASS: &str = "plugin_api::Chatty";

        #[test]
        fn creating_an_instance_registers_no_dispatcher_of_its_own() {
            let test = PagletTest::new::<Chatty>();
            // Warm up: the first call registers the library's dispatcher and the callsites.
            let first = test.create_class(CLASS, json!({})).expect("create");
            test.send(&first, "hello", Value::Null).expect("send");
            let before = REGISTRATIONS.load(Ordering::Relaxed);
            for _ in 0..200 {
                test.create_class(CLASS, json!({})).expect("create");
            }
            let added = REGISTRATIONS.load(Ordering::Relaxed) - before;
            // One registration per instance made creating O(instances); a few may come from
            // other tests registering new callsites meanwhile.
            assert!(added < 50, "{added} callsite registrations for 200 creates");
        }

        #[test]
        fn logs_of_a_nested_call_go_to_the_instance_that_logged() {
            let test = PagletTest::new::<Chatty>();
            let outer = test
                .create_with_id(CLASS, "outer", json!({}))
                .expect("create");
            let inner = test
                .create_with_id(CLASS, "inner", json!({}))
                .expect("create");
            test.send(&outer, "outer", json!({"to": inner}))
                .expect("send");
            let lines: Vec<(String, String)> = test
                .logs()
                .into_iter()
                .map(|line| (line.id, line.message))
                .collect();
            let expected = [
                ("outer", "before outer"),
                ("inner", "before inner"),
                ("inner", "after inner"),
                ("outer", "after outer"),
            ]
            .map(|(id, message)| (id.to_string(), message.to_string()));
            assert_eq!(lines, expected);
        }
    }
}

//! The [`NodeGateway`] trait: running placed requests on instances.

use std::sync::Arc;
use std::time::Duration;

use crate::BoxFuture;
use crate::protocol::ProtocolError;
use crate::sandbox::{ExitStatus, LaunchError, LimitExceeded};
use crate::types::{FunctionSpec, Invocation, InvocationResult, NodeId, Placement};

/// Why an invocation produced no function result.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The instance exited or was killed before answering.
    #[error("instance exited with {status} before responding{}", limit.map(|l| format!(": {l}")).unwrap_or_default())]
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// The resource limit that killed it, when known.
        limit: Option<LimitExceeded>,
    },
    /// The deadline passed; the instance was killed.
    #[error("function did not respond within {timeout:?}; instance killed")]
    TimedOut {
        /// The function's timeout.
        timeout: Duration,
    },
    /// The instance broke the guest protocol; it was killed.
    #[error("instance broke the guest protocol: {0}; instance killed")]
    Protocol(#[source] ProtocolError),
    /// The handler failed and said so (an `Error` frame).
    #[error("function error: {message}")]
    Function {
        /// Status the function asked for.
        status: u16,
        /// Its message.
        message: String,
    },
    /// No instance could be launched.
    #[error("cannot start an instance: {0}")]
    Launch(#[source] LaunchError),
    /// The placement names another node.
    #[error("placement for node {placement} reached node {node}")]
    WrongNode {
        /// The placement's node.
        placement: NodeId,
        /// This node.
        node: NodeId,
    },
    /// The node gateway is shutting down.
    #[error("node gateway is shutting down")]
    ShuttingDown,
    /// `error`, with what the instance wrote before it (see
    /// [`InvokeError::with_logs`]).
    #[error("{error}")]
    WithLogs {
        /// The failure.
        error: Box<InvokeError>,
        /// The instance's output for this request (`Log` frames, stdout,
        /// stderr).
        logs: String,
    },
    /// The node running the request was lost (its connection closed, or it
    /// missed its heartbeats): the request may or may not have run.
    #[error("node {node} was lost while running the request: {reason}")]
    NodeLost {
        /// The node.
        node: NodeId,
        /// What happened to it.
        reason: String,
    },
    /// A remote node answered with an error of its own (its status, code
    /// and message, as its node gateway gave them).
    #[error("{message}")]
    Remote {
        /// The node.
        node: NodeId,
        /// The HTTP status it chose.
        status: u16,
        /// Its machine-readable code.
        code: String,
        /// Its message.
        message: String,
    },
}

/// The codes [`InvokeError::code`] returns, so a code that crossed a
/// process boundary maps back to the same static string.
const CODES: &[&str] = &[
    "instance_exited",
    "timeout",
    "protocol_violation",
    "function_error",
    "launch_failed",
    "wrong_node",
    "shutting_down",
    "node_lost",
];

impl InvokeError {
    /// This error with the instance's output attached (unchanged when
    /// `logs` is empty; replaces logs attached before).
    #[must_use]
    pub fn with_logs(self, logs: String) -> Self {
        if logs.is_empty() {
            return self;
        }
        InvokeError::WithLogs {
            error: Box::new(self.into_parts().0),
            logs,
        }
    }

    /// The failure without its logs (for matching on the kind of failure).
    pub fn kind(&self) -> &InvokeError {
        match self {
            InvokeError::WithLogs { error, .. } => error.kind(),
            e => e,
        }
    }

    /// The logs attached with [`InvokeError::with_logs`] (empty if none).
    pub fn logs(&self) -> &str {
        match self {
            InvokeError::WithLogs { logs, .. } => logs,
            _ => "",
        }
    }

    /// The failure and its logs, separated.
    pub fn into_parts(self) -> (InvokeError, String) {
        match self {
            InvokeError::WithLogs { error, logs } => (error.into_parts().0, logs),
            e => (e, String::new()),
        }
    }

    /// The HTTP status a gateway answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            InvokeError::WithLogs { error, .. } => error.http_status(),
            InvokeError::Exited { .. } | InvokeError::Protocol(_) => 502,
            InvokeError::TimedOut { .. } => 504,
            InvokeError::Function { status, .. } => *status,
            InvokeError::Launch(_) | InvokeError::WrongNode { .. } => 500,
            InvokeError::ShuttingDown => 503,
            InvokeError::NodeLost { .. } => 502,
            InvokeError::Remote { status, .. } => {
                if (400..=599).contains(status) {
                    *status
                } else {
                    502
                }
            }
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::WithLogs { error, .. } => error.code(),
            InvokeError::Exited { .. } => "instance_exited",
            InvokeError::TimedOut { .. } => "timeout",
            InvokeError::Protocol(_) => "protocol_violation",
            InvokeError::Function { .. } => "function_error",
            InvokeError::Launch(_) => "launch_failed",
            InvokeError::WrongNode { .. } => "wrong_node",
            InvokeError::ShuttingDown => "shutting_down",
            InvokeError::NodeLost { .. } => "node_lost",
            InvokeError::Remote { code, .. } => CODES
                .iter()
                .find(|c| **c == code.as_str())
                .copied()
                .unwrap_or("remote_error"),
        }
    }
}

/// Accepts placed requests on one node, makes sure an instance pulls each
/// one, and returns the instance's answer.
///
/// Every call ends in exactly one `Ok` result or one error; the
/// implementation enforces the invocation's deadline.
///
/// # Example
///
/// A node gateway that answers every request itself (no instances), e.g.
/// for a health-check function:
///
/// ```
/// use std::sync::Arc;
/// use faas_core::*;
///
/// struct Pong(NodeId);
///
/// impl NodeGateway for Pong {
///     fn node(&self) -> &NodeId { &self.0 }
///     fn invoke<'a>(&'a self, _f: Arc<FunctionSpec>, _p: &'a Placement, inv: Invocation)
///         -> BoxFuture<'a, Result<InvocationResult, InvokeError>>
///     {
///         Box::pin(async move {
///             Ok(InvocationResult {
///                 status: 200, headers: vec![], body: inv.body,
///                 timings: Timings::default(), cold: false, logs: String::new(),
///             })
///         })
///     }
/// }
///
/// let gw: Arc<dyn NodeGateway> = Arc::new(Pong(NodeId("n1".into())));
/// assert_eq!(gw.node().0, "n1");
/// ```
pub trait NodeGateway: Send + Sync {
    /// The node this gateway runs.
    fn node(&self) -> &NodeId;

    /// Runs one invocation of `function` placed on this node.
    fn invoke<'a>(
        &'a self,
        function: Arc<FunctionSpec>,
        placement: &'a Placement,
        invocation: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>>;

    /// `function` was deleted: drop what this node keeps of it (idle
    /// instances, copies of its versions). Requests running now finish.
    /// The default keeps nothing, so does nothing.
    fn remove_function(&self, function: &str) {
        let _ = function;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn NodeGateway) {}

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(
            InvokeError::Exited {
                status: ExitStatus::Code(3),
                limit: None,
            }
            .to_string(),
            "instance exited with status 3 before responding"
        );
        assert_eq!(
            InvokeError::Exited {
                status: ExitStatus::Code(3),
                limit: None,
            }
            .http_status(),
            502
        );
        assert_eq!(
            InvokeError::TimedOut {
                timeout: Duration::from_secs(1)
            }
            .http_status(),
            504
        );
        assert_eq!(
            InvokeError::Function {
                status: 500,
                message: "boom".into()
            }
            .http_status(),
            500
        );
        let lost = InvokeError::NodeLost {
            node: NodeId("n2".into()),
            reason: "connection closed".into(),
        };
        assert_eq!(lost.http_status(), 502);
        assert_eq!(lost.code(), "node_lost");
        assert!(lost.to_string().contains("node n2 was lost"));
        let remote = |status, code: &str| InvokeError::Remote {
            node: NodeId("n1".into()),
            status,
            code: code.into(),
            message: "m".into(),
        };
        assert_eq!(remote(502, "instance_exited").code(), "instance_exited");
        assert_eq!(remote(502, "made-up").code(), "remote_error");
        assert_eq!(remote(200, "x").http_status(), 502);
    }

    #[test]
    fn logs_ride_along_without_changing_the_error() {
        let e = InvokeError::TimedOut {
            timeout: Duration::from_secs(1),
        };
        let text = e.to_string();
        assert_eq!(e.logs(), "");
        let e = e.with_logs("a\n".into()).with_logs("b\n".into());
        assert_eq!(
            (e.logs(), e.http_status(), e.code()),
            ("b\n", 504, "timeout")
        );
        assert_eq!(e.to_string(), text);
        assert!(matches!(e.kind(), InvokeError::TimedOut { .. }));
        let (e, logs) = e.into_parts();
        assert!(matches!(e, InvokeError::TimedOut { .. }));
        assert_eq!(logs, "b\n");
        assert!(matches!(
            InvokeError::ShuttingDown.with_logs(String::new()),
            InvokeError::ShuttingDown
        ));
    }
}

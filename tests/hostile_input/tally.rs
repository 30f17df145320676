//! The rule every answer must keep, and the tally of what each RPC answered.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use tonic::Code;

pub type Client<T> = T;
pub type Call<'a> = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

fn allowed(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::FailedPrecondition
    )
}

/// Counts of codes per RPC, and the calls that broke the rule.
#[derive(Default)]
pub struct Tally {
    pub codes: BTreeMap<String, BTreeMap<String, usize>>,
    pub wrong: Vec<String>,
}

impl Tally {
    pub async fn check(&mut self, rpc: &str, what: &str, call: Call<'_>) {
        let code = match call.await {
            Ok(()) => Code::Ok,
            Err(s) => s.code(),
        };
        *self
            .codes
            .entry(rpc.to_string())
            .or_default()
            .entry(format!("{code:?}"))
            .or_default() += 1;
        if !allowed(code) {
            self.wrong.push(format!("{rpc} with {what}: {code:?}"));
        }
    }
}

/// Reads a stream's first answer, so a refusal carried in it counts.
pub async fn first<T>(
    resp: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<(), tonic::Status> {
    resp?.into_inner().message().await.map(|_| ())
}

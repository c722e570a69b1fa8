//! Many processes on torch.distributed's c10d: r2m drives PyTorch's own collectives (Gloo on
//! CPUs, TCPStore to meet) through csrc/dist.cpp, and launches the way PyTorch jobs launch.
//! - [`backend`]: [`Store`] and [`Group`], the collectives with timeouts.
//! - [`launch`]: the torchrun environment ([`Env`]) and `--nproc N`, which spawns and supervises
//!   the ranks on one machine.
//! - [`dp`]: data parallel building blocks (shares of a batch, weights broadcast, gradients summed).
//! - [`zero`]: ZeRO stage 1, AdamW's moments sharded over the ranks.
pub mod backend;
pub mod dp;
pub mod launch;
pub mod zero;

pub use backend::{Group, ReduceOp, Store};
pub use launch::Env;

use anyhow::Result;
use std::time::Duration;

/// This process's place in a job: its rank and the group of all ranks.
pub struct Dist {
    pub env: Env,
    pub group: Group,
    /// The store the ranks met on (kept alive for the group's lifetime; rank 0 serves it).
    pub store: Store,
    /// ZeRO stage 1: the trainers shard AdamW's moments over the ranks ([`zero::Zero1`]) instead
    /// of keeping them whole on each (`--zero1`).
    pub zero1: bool,
}

impl Dist {
    /// Joins the job `env` describes: the TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it,
    /// unless torchrun's agent does), then a Gloo group over it. Waits at most `timeout` for the
    /// other ranks to arrive, and every collective afterwards at most `timeout` too.
    pub fn join(env: Env, timeout: Duration) -> Result<Dist> {
        let serve = env.rank == 0 && !env.agent_store;
        let store = Store::tcp(&env.master_addr, env.master_port, serve, env.world, timeout)?;
        let hostname = env.gloo_hostname();
        let group = Group::gloo(&store.prefixed("default_pg")?, env.rank, env.world, timeout, hostname.as_deref())?;
        Ok(Dist { env, group, store, zero1: false })
    }

    /// The job torchrun's environment describes, joined; `None` for one process (WORLD_SIZE unset
    /// or 1).
    pub fn from_env(timeout: Duration) -> Result<Option<Dist>> {
        match Env::from_env()? {
            Some(env) if env.world > 1 => Ok(Some(Dist::join(env, timeout)?)),
            _ => Ok(None),
        }
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world(&self) -> usize {
        self.env.world
    }

    pub fn is_main(&self) -> bool {
        self.env.rank == 0
    }

    /// Prints (to this rank's log) what the rank held at its peak: its resident memory and the
    /// bytes of optimiser state, with the collectives' traffic: what `--zero1` saves, measured.
    pub fn report_memory(&self, optimizer_bytes: usize) {
        let (bytes, secs) = self.group.traffic();
        eprintln!(
            "rank {} of {}: peak resident memory {:.0} MB; AdamW moments {:.1} MB ({}); collectives {:.1} MB in {:.2} s",
            self.rank(),
            self.world(),
            crate::r2m::peak_rss_kb() as f64 / 1024.0,
            optimizer_bytes as f64 / 1e6,
            if self.zero1 { "sharded, ZeRO-1" } else { "whole on every rank" },
            bytes as f64 / 1e6,
            secs
        );
    }
}

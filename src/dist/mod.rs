//! Many processes on torch.distributed's c10d: r2m drives PyTorch's own collectives (Gloo on
//! CPUs, NCCL on GPUs, TCPStore to meet) through csrc/dist.cpp and csrc/dist_nccl.cpp, and
//! launches the way PyTorch jobs launch.
//! - [`backend`]: [`Store`] and [`Group`], the collectives with timeouts.
//! - [`launch`]: the torchrun environment ([`Env`]) and `--nproc N`, which spawns and supervises
//!   the ranks on one machine.
//! - [`dp`]: data parallel building blocks (shares of a batch, weights broadcast, gradients summed).
//! - [`zero`]: ZeRO stage 1, AdamW's moments sharded over the ranks.
//! - [`rte`]: the reward model on a rank of its own, linked to the policy's ranks by its
//!   reward-token embeddings and scores (the R2M paper's deployment).
pub mod backend;
pub mod dp;
pub mod launch;
pub mod rte;
pub mod zero;

pub use backend::{Group, ReduceOp, Store};
pub use launch::Env;

use anyhow::Result;
use std::time::Duration;

/// This process's place in a job: its rank, its role and its groups.
pub struct Dist {
    pub env: Env,
    /// The ranks that train together: every rank of the job, or, with a reward-model rank, the
    /// policy's ranks (the reward-model rank is alone in its own).
    pub group: Group,
    /// With a reward-model rank (`--rm-ranks 1`, the job's last rank): the link between it and the
    /// policy's ranks, a group of every rank.
    pub rm_link: Option<std::sync::Arc<rte::RmLink>>,
    /// The store the ranks met on (kept alive for the group's lifetime; rank 0 serves it).
    pub store: Store,
    /// ZeRO stage 1: the trainers shard AdamW's moments over the ranks ([`zero::Zero1`]) instead
    /// of keeping them whole on each (`--zero1`).
    pub zero1: bool,
}

impl Dist {
    /// Joins the job `env` describes: the TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it,
    /// unless torchrun's agent does), then a process group over it: NCCL when this rank runs on
    /// a GPU (`device`), Gloo on CPUs. Waits at most `timeout` for the other ranks to arrive, and
    /// every collective afterwards at most `timeout` too.
    ///
    /// With `rm_ranks` = 1 the last rank is the reward model's: the others train together in a
    /// group of their own, and a second group of every rank links them to it ([`rte`]; always
    /// Gloo: what crosses it is small and goes through host memory).
    pub fn join(env: Env, timeout: Duration, rm_ranks: usize, device: tch::Device) -> Result<Dist> {
        anyhow::ensure!(rm_ranks <= 1, "--rm-ranks {rm_ranks}: one reward-model rank serves the job (--rm-ranks 1)");
        anyhow::ensure!(
            env.world > rm_ranks,
            "--rm-ranks {rm_ranks} with WORLD_SIZE {}: the policy needs at least one rank of its own",
            env.world
        );
        let serve = env.rank == 0 && !env.agent_store;
        let store = Store::tcp(&env.master_addr, env.master_port, serve, env.world, timeout)?;
        let hostname = env.gloo_hostname();
        // The group of ranks that train together: on this rank's GPU, or on CPUs.
        let train = |prefix: &str, rank: usize, world: usize| -> Result<Group> {
            let s = store.prefixed(prefix)?;
            match device {
                tch::Device::Cuda(gpu) => Group::nccl(&s, rank, world, timeout, gpu),
                _ => Group::gloo(&s, rank, world, timeout, hostname.as_deref()),
            }
        };
        let (group, rm_link) = if rm_ranks == 0 {
            (train("default_pg", env.rank, env.world)?, None)
        } else {
            let policy = env.world - rm_ranks;
            let link = Group::gloo(&store.prefixed("rm_link")?, env.rank, env.world, timeout, hostname.as_deref())?;
            let group = if env.rank < policy {
                train("policy", env.rank, policy)?
            } else {
                Group::gloo(&store.prefixed("reward_model")?, env.rank - policy, rm_ranks, timeout, hostname.as_deref())?
            };
            (group, Some(std::sync::Arc::new(rte::RmLink::new(link))))
        };
        Ok(Dist { env, group, rm_link, store, zero1: false })
    }

    /// Checks that this rank's model runs where its group's collectives do (`device`).
    pub fn check_device(&self, device: tch::Device) -> Result<()> {
        anyhow::ensure!(
            self.group.device() == device,
            "device {device:?}: this rank's process group runs on {:?}; a rank's model and its group share one device",
            self.group.device()
        );
        Ok(())
    }

    /// Whether this is the reward-model rank of a job with one ([`rte::serve`] is its work).
    pub fn is_rm_rank(&self) -> bool {
        self.rm_link.as_ref().is_some_and(|l| l.is_rm_rank())
    }

    /// The job torchrun's environment describes, joined; `None` for one process (WORLD_SIZE unset
    /// or 1).
    pub fn from_env(timeout: Duration, rm_ranks: usize, device: tch::Device) -> Result<Option<Dist>> {
        match Env::from_env()? {
            Some(env) if env.world > 1 => Ok(Some(Dist::join(env, timeout, rm_ranks, device)?)),
            _ => Ok(None),
        }
    }

    /// This rank in [`Dist::group`] (the job's rank, but for a reward-model rank).
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The ranks that train together ([`Dist::group`]'s size).
    pub fn world(&self) -> usize {
        self.group.world()
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

//! c10d's TCPStore and process groups (csrc/dist.cpp) behind safe handles: [`Store`] to meet and
//! exchange small values, [`Group`] for the collectives. Gloo's group is built in; NCCL's, for
//! GPU ranks, comes from libr2m_dist_nccl.so (csrc/dist_nccl.cpp), loaded on first use. Every
//! collective carries the group's timeout (the backend ends it with an error then); a C++ error
//! comes back as an error naming the collective, its rank and group.
use anyhow::{bail, Result};
use std::ffi::CString;
use std::os::raw::c_char;
use std::path::PathBuf;
use std::time::Duration;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

#[repr(C)]
struct RawStore {
    _private: [u8; 0],
}
#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

extern "C" {
    fn r2m_store_tcp(
        host: *const c_char,
        port: u16,
        is_server: i32,
        world: i64,
        timeout_ms: i64,
        out: *mut *mut RawStore,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_store_prefix(base: *const RawStore, prefix: *const c_char, out: *mut *mut RawStore, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_store_set(s: *const RawStore, key: *const c_char, value: *const u8, len: usize, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_store_get(s: *const RawStore, key: *const c_char, value: *mut *mut u8, len: *mut usize, err: *mut c_char, err_len: usize)
        -> i32;
    fn r2m_store_add(s: *const RawStore, key: *const c_char, delta: i64, out: *mut i64, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_buffer_free(p: *mut u8);
    fn r2m_store_free(s: *mut RawStore);
    fn r2m_group_gloo(
        s: *const RawStore,
        rank: i64,
        world: i64,
        timeout_ms: i64,
        hostname: *const c_char,
        out: *mut *mut RawGroup,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_group_free(g: *mut RawGroup);
    fn r2m_broadcast(g: *const RawGroup, t: *mut C_tensor, root: i64, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_all_reduce(g: *const RawGroup, t: *mut C_tensor, op: i32, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_all_gather(g: *const RawGroup, out: *mut C_tensor, input: *mut C_tensor, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_reduce_scatter(g: *const RawGroup, out: *mut C_tensor, input: *mut C_tensor, op: i32, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_barrier(g: *const RawGroup, err: *mut c_char, err_len: usize) -> i32;
}

/// `r2m_group_nccl` of csrc/dist_nccl.cpp.
type GroupNccl = unsafe extern "C" fn(*const RawStore, i64, i64, i64, i64, *mut *mut RawGroup, *mut c_char, usize) -> i32;

/// The shared object's name, and the path build.rs built it at (empty when it could not).
const NCCL_SO: &str = "libr2m_dist_nccl.so";
const NCCL_SO_BUILT: &str = env!("R2M_DIST_NCCL_SO");

/// Where libr2m_dist_nccl.so may be, in the order tried: `R2M_DIST_NCCL_SO`, beside the running
/// binary (or one folder up, for test binaries in target/<profile>/deps), where build.rs built it.
fn nccl_shim_candidates() -> Vec<PathBuf> {
    let mut c = vec![];
    if let Some(p) = std::env::var_os("R2M_DIST_NCCL_SO").filter(|p| !p.is_empty()) {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) {
        c.push(dir.join(NCCL_SO));
        if let Some(up) = dir.parent() {
            c.push(up.join(NCCL_SO));
        }
    }
    if !NCCL_SO_BUILT.is_empty() {
        c.push(PathBuf::from(NCCL_SO_BUILT));
    }
    c
}

/// Whether NCCL's process group can be made by this r2m: libr2m_dist_nccl.so loads (a GPU is
/// needed only to make a group), or why not.
pub fn nccl_loadable() -> Result<()> {
    nccl_shim().map(|_| ())
}

/// Loads libr2m_dist_nccl.so (once; it needs libtorch_cuda, which [`crate::device::load_cuda_library`]
/// brings in) and returns its entry point, or why it cannot.
fn nccl_shim() -> Result<GroupNccl> {
    static ENTRY: std::sync::OnceLock<std::result::Result<usize, String>> = std::sync::OnceLock::new();
    let entry = ENTRY.get_or_init(|| {
        if !crate::device::load_cuda_library() {
            return Err("libtorch_cuda.so cannot be loaded (a CPU-only torch?): NCCL needs the CUDA build of libtorch".into());
        }
        let candidates = nccl_shim_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(format!(
                "this r2m was built without NCCL's process group ({NCCL_SO} is in none of {}): build.rs found no CUDA/NCCL \
                 headers beside the torch wheel; run scripts/bootstrap.sh and rebuild, or set R2M_DIST_NCCL_SO",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| format!("{} contains a NUL byte", path.display()))?;
        // SAFETY: dlopen with a valid C string; the handle stays open for the process lifetime.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns a thread-local C string (or null) describing the last failure.
            let e = unsafe { libc::dlerror() };
            let why =
                if e.is_null() { "unknown error".into() } else { unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned() };
            return Err(format!("loading {}: {why}", path.display()));
        }
        // SAFETY: `h` is a live handle; the name is a valid C string.
        let f = unsafe { libc::dlsym(h, c"r2m_group_nccl".as_ptr()) };
        if f.is_null() {
            return Err(format!("{} has no r2m_group_nccl (built from another r2m?)", path.display()));
        }
        Ok(f as usize)
    });
    match entry {
        // SAFETY: the address of csrc/dist_nccl.cpp's r2m_group_nccl, whose C signature GroupNccl is.
        Ok(f) => Ok(unsafe { std::mem::transmute::<usize, GroupNccl>(*f) }),
        Err(e) => bail!("NCCL process group: {e}"),
    }
}

/// Calls `f(err, err_len)` and turns a non-zero status into the message the C++ side wrote.
fn call(what: &str, f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<()> {
    let mut err = vec![0 as c_char; 2048];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the C++ side NUL-terminates within err_len (and the buffer starts zeroed).
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
    bail!("{what}: {}", msg.trim_end())
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| anyhow::anyhow!("{what} '{s}' contains a NUL byte"))
}

fn size(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// How a collective combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> i32 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// A key-value store the ranks share (c10d's TCPStore, or a prefixed view of one).
pub struct Store {
    raw: *mut RawStore,
    name: String,
}

// SAFETY: c10d stores are used from many threads in PyTorch (their methods lock internally); the
// handle is only freed in Drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// The TCPStore at `host:port`: rank 0 (`is_server`) serves it, the others connect. Waits
    /// until all `world` ranks have joined, at most `timeout` (the error then says how many did).
    pub fn tcp(host: &str, port: u16, is_server: bool, world: usize, timeout: Duration) -> Result<Store> {
        let h = cstring("host", host)?;
        let mut raw = std::ptr::null_mut();
        let name = format!("TCPStore {host}:{port}");
        // SAFETY: `h` lives for the call; the C++ side writes the handle on success.
        call(&format!("{name} ({} of {world} ranks)", if is_server { "serving" } else { "joining" }), |e, l| unsafe {
            r2m_store_tcp(h.as_ptr(), port, i32::from(is_server), world as i64, millis(timeout), &mut raw, e, l)
        })?;
        Ok(Store { raw, name })
    }

    /// A view of this store whose keys all start with `prefix` (one per process group, so that
    /// two groups on one store do not read each other's keys).
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        let p = cstring("store prefix", prefix)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `self.raw` is live; the C++ side keeps its own reference to the base store.
        call(&self.name, |e, l| unsafe { r2m_store_prefix(self.raw, p.as_ptr(), &mut raw, e, l) })?;
        Ok(Store { raw, name: format!("{}/{prefix}", self.name) })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let k = cstring("store key", key)?;
        // SAFETY: `value` and `k` live for the call.
        call(&format!("{}: set '{key}'", self.name), |e, l| unsafe {
            r2m_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len(), e, l)
        })
    }

    /// The value under `key`, waiting for another rank to set it (at most the store's timeout).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let k = cstring("store key", key)?;
        let (mut p, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: on success the C++ side hands over a malloc'ed buffer of `len` bytes.
        call(&format!("{}: get '{key}'", self.name), |e, l| unsafe { r2m_store_get(self.raw, k.as_ptr(), &mut p, &mut len, e, l) })?;
        // SAFETY: `p` points at `len` initialised bytes until freed below.
        let v = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
        // SAFETY: `p` came from the C++ side's malloc.
        unsafe { r2m_buffer_free(p) };
        Ok(v)
    }

    /// Adds `delta` to the counter under `key` and returns the new value (atomic across ranks).
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let k = cstring("store key", key)?;
        let mut out = 0i64;
        // SAFETY: `k` lives for the call; the C++ side writes one i64.
        call(&format!("{}: add '{key}'", self.name), |e, l| unsafe { r2m_store_add(self.raw, k.as_ptr(), delta, &mut out, e, l) })?;
        Ok(out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by r2m_store_tcp/prefix and freed once.
        unsafe { r2m_store_free(self.raw) }
    }
}

/// A process group: `world` ranks that run the same collectives in the same order.
pub struct Group {
    raw: *mut RawGroup,
    rank: usize,
    world: usize,
    name: String,
    /// Where the backend's collectives run: CPU for Gloo, the rank's GPU for NCCL. Tensors
    /// elsewhere are copied there and back.
    device: Device,
    /// Bytes handed to collectives and nanoseconds spent in them, since the group was made.
    bytes: std::sync::atomic::AtomicU64,
    nanos: std::sync::atomic::AtomicU64,
}

// SAFETY: c10d backends are driven from any thread in PyTorch; r2m calls one collective at a time.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Group {
    /// A Gloo group (CPU tensors) over `store`. `hostname` is the address this rank's Gloo
    /// device binds to (others must reach it); `None` lets Gloo choose (GLOO_SOCKET_IFNAME if
    /// set, else the machine's hostname). Every collective waits at most `timeout`.
    pub fn gloo(store: &Store, rank: usize, world: usize, timeout: Duration, hostname: Option<&str>) -> Result<Group> {
        if rank >= world {
            bail!("rank {rank} is out of range for a world of {world}");
        }
        let h = hostname.map(|h| cstring("Gloo hostname", h)).transpose()?;
        let hp = h.as_ref().map_or(std::ptr::null(), |h| h.as_ptr());
        let mut raw = std::ptr::null_mut();
        let name = format!("gloo group (rank {rank} of {world})");
        // SAFETY: `store.raw` and `h` live for the call; the group keeps its own store reference.
        call(&format!("creating the {name}"), |e, l| unsafe {
            r2m_group_gloo(store.raw, rank as i64, world as i64, millis(timeout), hp, &mut raw, e, l)
        })?;
        Ok(Group { raw, rank, world, name, device: Device::Cpu, bytes: 0.into(), nanos: 0.into() })
    }

    /// An NCCL group (tensors on CUDA device `gpu`, this rank's) over `store`. Every collective
    /// waits at most `timeout`, the host blocked until it ends.
    pub fn nccl(store: &Store, rank: usize, world: usize, timeout: Duration, gpu: usize) -> Result<Group> {
        if rank >= world {
            bail!("rank {rank} is out of range for a world of {world}");
        }
        let entry = nccl_shim()?;
        let name = format!("nccl group (rank {rank} of {world}, cuda:{gpu})");
        if !crate::device::load_cuda() {
            bail!("creating the {name}: no usable CUDA device on this machine (NCCL runs on GPUs; CPU ranks use Gloo)");
        }
        let n = tch::Cuda::device_count() as usize;
        if gpu >= n {
            bail!("creating the {name}: this machine has only {n} CUDA device(s)");
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: `store.raw` lives for the call; the group keeps its own store reference.
        call(&format!("creating the {name}"), |e, l| unsafe {
            entry(store.raw, rank as i64, world as i64, millis(timeout), gpu as i64, &mut raw, e, l)
        })?;
        Ok(Group { raw, rank, world, name, device: Device::Cuda(gpu), bytes: 0.into(), nanos: 0.into() })
    }

    /// Where this group's collectives run (CPU for Gloo, the rank's GPU for NCCL).
    pub fn device(&self) -> Device {
        self.device
    }

    /// `t` where the backend needs it: itself when it is on the group's device, else a copy there.
    fn here(&self, t: &Tensor) -> Tensor {
        if t.device() == self.device {
            t.shallow_clone()
        } else {
            t.to_device(self.device)
        }
    }

    /// Runs `f` on `t` on the group's device: in place there, else on a copy written back to `t`.
    fn in_place(&self, t: &mut Tensor, f: impl FnOnce(&mut Tensor) -> Result<()>) -> Result<()> {
        if t.device() == self.device {
            return f(t);
        }
        let mut d = t.to_device(self.device);
        f(&mut d)?;
        t.copy_(&d);
        Ok(())
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// The bytes this rank has handed to collectives (each call's tensor once: a ring all-reduce
    /// moves about 2 (N - 1) / N times that over the wire) and the seconds spent in them, since
    /// the group was made.
    pub fn traffic(&self) -> (u64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.bytes.load(Relaxed), self.nanos.load(Relaxed) as f64 * 1e-9)
    }

    /// Counts one collective of `bytes` that started at `t0`.
    fn count(&self, bytes: usize, t0: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        self.nanos.fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }

    fn check(&self, what: &str, t: &Tensor) -> Result<()> {
        if !t.is_contiguous() {
            bail!("{} {what}: the tensor must be contiguous", self.name);
        }
        Ok(())
    }

    /// Checks a collective between a `whole` tensor of world x `part`'s elements and `part`,
    /// both contiguous and of one dtype.
    fn check_split(&self, what: &str, whole: (&str, &Tensor), part: (&str, &Tensor)) -> Result<()> {
        self.check(&format!("{what} {}", whole.0), whole.1)?;
        self.check(&format!("{what} {}", part.0), part.1)?;
        let (nw, np) = (whole.1.numel(), part.1.numel());
        if nw != np * self.world || whole.1.kind() != part.1.kind() {
            bail!(
                "{} {what}: {} has {nw} {:?} elements, {} {np} {:?} (want {} x {})",
                self.name,
                whole.0,
                whole.1.kind(),
                part.0,
                part.1.kind(),
                self.world,
                part.0
            );
        }
        Ok(())
    }

    /// Copies `root`'s `t` into every rank's `t` (same shape and dtype on every rank).
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.check("broadcast", t)?;
        let what = format!("{} broadcast from rank {root}", self.name);
        if root >= self.world {
            bail!("{what}: no such rank");
        }
        let (t0, bytes) = (std::time::Instant::now(), size(t));
        // SAFETY: `t` is a live, contiguous at::Tensor for the call.
        let r = self.in_place(t, |t| call(&what, |e, l| unsafe { r2m_broadcast(self.raw, t.as_mut_ptr(), root as i64, e, l) }));
        self.count(bytes, t0);
        r
    }

    /// Replaces every rank's `t` with the reduction over ranks, elementwise.
    pub fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        self.check("all_reduce", t)?;
        let (t0, bytes) = (std::time::Instant::now(), size(t));
        let what = format!("{} all_reduce ({op:?})", self.name);
        // SAFETY: as in `broadcast`.
        let r = self.in_place(t, |t| call(&what, |e, l| unsafe { r2m_all_reduce(self.raw, t.as_mut_ptr(), op.code(), e, l) }));
        self.count(bytes, t0);
        r
    }

    /// Fills `out` (world x input's numel elements) with every rank's `input`, rank 0 first.
    pub fn all_gather(&self, out: &mut Tensor, input: &Tensor) -> Result<()> {
        self.check_split("all_gather", ("output", out), ("input", input))?;
        let t0 = std::time::Instant::now();
        let (what, x) = (format!("{} all_gather", self.name), self.here(input));
        // SAFETY: both tensors are live and contiguous; c10d only reads `x`.
        let r = self.in_place(out, |out| {
            call(&what, |e, l| unsafe { r2m_all_gather(self.raw, out.as_mut_ptr(), x.as_ptr() as *mut C_tensor, e, l) })
        });
        self.count(size(input), t0);
        r
    }

    /// Reduces `input` (world x out's numel elements) over ranks; rank r keeps slice r in `out`.
    pub fn reduce_scatter(&self, out: &mut Tensor, input: &Tensor, op: ReduceOp) -> Result<()> {
        self.check_split("reduce_scatter", ("input", input), ("output", out))?;
        let t0 = std::time::Instant::now();
        let (what, x) = (format!("{} reduce_scatter ({op:?})", self.name), self.here(input));
        // SAFETY: as in `all_gather`.
        let r = self.in_place(out, |out| {
            call(&what, |e, l| unsafe { r2m_reduce_scatter(self.raw, out.as_mut_ptr(), x.as_ptr() as *mut C_tensor, op.code(), e, l) })
        });
        self.count(size(input), t0);
        r
    }

    /// Returns once every rank has called it (or fails after the timeout).
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: `self.raw` is live.
        call(&format!("{} barrier", self.name), |e, l| unsafe { r2m_barrier(self.raw, e, l) })
    }

    /// The sum over ranks of each value (one all-reduce of an f64 vector): counts, sums and sums
    /// of squares for the statistics that must not depend on the number of ranks.
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world == 1 {
            return Ok(values.to_vec());
        }
        let mut t = Tensor::from_slice(values).to_kind(Kind::Double);
        self.all_reduce(&mut t, ReduceOp::Sum)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by r2m_group_gloo or r2m_group_nccl and freed once.
        unsafe { r2m_group_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Runs `f(group)` on `world` ranks, one thread each, over a fresh TCPStore on localhost.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        timeout: Duration,
        f: impl Fn(Group) -> Result<T> + Send + Sync + Copy + 'static,
    ) -> Vec<Result<T>> {
        let port = free_port();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                std::thread::spawn(move || {
                    let store = Store::tcp("127.0.0.1", port, rank == 0, world, timeout)?;
                    let g = Group::gloo(&store.prefixed("default_pg")?, rank, world, timeout, Some("127.0.0.1"))?;
                    f(g)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn every_collective_gives_the_reduction_of_both_ranks() {
        let out = on_ranks(2, Duration::from_secs(20), |g| {
            let r = g.rank() as f64;
            let mut t = Tensor::from_slice(&[1.0 + r, 10.0 * r, -r]);
            g.all_reduce(&mut t, ReduceOp::Sum)?;
            let sum = Vec::<f64>::try_from(&t)?;
            let mut t = Tensor::from_slice(&[r, -r]);
            g.all_reduce(&mut t, ReduceOp::Max)?;
            let max = Vec::<f64>::try_from(&t)?;
            let mut t = if g.rank() == 1 { Tensor::from_slice(&[7i64, 8, 9]) } else { Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu)) };
            g.broadcast(&mut t, 1)?;
            let bc = Vec::<i64>::try_from(&t)?;
            let input = Tensor::from_slice(&[r, r + 0.5]);
            let mut gathered = Tensor::zeros([4], (Kind::Double, tch::Device::Cpu));
            g.all_gather(&mut gathered, &input)?;
            let ag = Vec::<f64>::try_from(&gathered)?;
            let input = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0]) * (r + 1.0);
            let mut shard = Tensor::zeros([2], (Kind::Double, tch::Device::Cpu));
            g.reduce_scatter(&mut shard, &input, ReduceOp::Sum)?;
            let rs = Vec::<f64>::try_from(&shard)?;
            g.barrier()?;
            Ok((g.rank(), sum, max, bc, ag, rs, g.sum_f64(&[r, 1.0])?))
        });
        for res in out {
            let (rank, sum, max, bc, ag, rs, sf) = res.unwrap();
            assert_eq!(sum, vec![3.0, 10.0, -1.0]);
            assert_eq!(max, vec![1.0, 0.0]);
            assert_eq!(bc, vec![7, 8, 9]);
            assert_eq!(ag, vec![0.0, 0.5, 1.0, 1.5]);
            // Slice r of (1,2,3,4) * 1 + (1,2,3,4) * 2.
            assert_eq!(rs, if rank == 0 { vec![3.0, 6.0] } else { vec![9.0, 12.0] });
            assert_eq!(sf, vec![1.0, 2.0]);
        }
    }

    #[test]
    fn a_mismatched_collective_is_an_error_naming_it() {
        let out = on_ranks(2, Duration::from_secs(20), |g| {
            // Both ranks are connected before either fails (and leaves) on its own.
            g.barrier()?;
            let input = Tensor::from_slice(&[1.0f64, 2.0]);
            let mut wrong = Tensor::zeros([3], (Kind::Double, tch::Device::Cpu));
            Ok(g.all_gather(&mut wrong, &input).unwrap_err().to_string())
        });
        for msg in out {
            let msg = msg.unwrap();
            assert!(msg.contains("all_gather") && msg.contains("want 2 x input"), "{msg}");
        }
    }

    #[test]
    fn a_rank_that_never_arrives_ends_in_an_error_after_the_timeout() {
        // Rank 0 of 2 serves the store; rank 1 never comes.
        let port = free_port();
        let t0 = std::time::Instant::now();
        let err = Store::tcp("127.0.0.1", port, true, 2, Duration::from_secs(2)).err().expect("the store cannot be complete");
        let msg = format!("{err:#}");
        assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}", t0.elapsed());
        assert!(msg.contains("TCPStore 127.0.0.1") && msg.contains("2 ranks"), "{msg}");
    }

    #[test]
    fn a_peer_that_stops_calling_collectives_times_out_the_other() {
        // Set once rank 1 has closed its group: rank 0, which serves the store, leaves after it.
        static PEER_GONE: AtomicBool = AtomicBool::new(false);
        let out = on_ranks(2, Duration::from_secs(3), |g| {
            g.barrier()?;
            if g.rank() == 1 {
                // Holds the group open without joining the next collective, then leaves.
                std::thread::sleep(Duration::from_secs(6));
                drop(g);
                PEER_GONE.store(true, Ordering::SeqCst);
                return Ok(None);
            }
            let t0 = std::time::Instant::now();
            let mut t = Tensor::from_slice(&[1.0f64]);
            let err = g.all_reduce(&mut t, ReduceOp::Sum).err().map(|e| format!("{e:#}"));
            let took = t0.elapsed();
            while !PEER_GONE.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(Some((err, took)))
        });
        let (err, took) = out.into_iter().next().unwrap().unwrap().unwrap();
        let msg = err.expect("rank 0's all_reduce must fail");
        assert!(msg.contains("all_reduce") && msg.contains("rank 0 of 2"), "{msg}");
        assert!(!msg.contains("Exception raised from"), "no C++ backtrace: {msg}");
        assert!(took < Duration::from_secs(6), "took {took:?}");
    }

    /// NCCL's group where a GPU is: one rank, every collective, on CUDA tensors and on CPU tensors
    /// (copied to the GPU and back). Without a GPU: the shim built here still loads, and asking for
    /// the group is an error that says there is no CUDA device.
    #[test]
    fn an_nccl_group_runs_every_collective_or_says_why_not() {
        if !NCCL_SO_BUILT.is_empty() {
            nccl_loadable().unwrap();
        }
        let timeout = Duration::from_secs(60);
        let store = Store::tcp("127.0.0.1", free_port(), true, 1, timeout).unwrap();
        let g = match Group::nccl(&store.prefixed("default_pg").unwrap(), 0, 1, timeout, 0) {
            Err(e) => {
                assert!(!crate::device::load_cuda(), "{e:#}");
                assert!(format!("{e:#}").contains("no usable CUDA device"), "{e:#}");
                return;
            }
            Ok(g) => g,
        };
        assert_eq!(g.device(), tch::Device::Cuda(0));
        for dev in [tch::Device::Cuda(0), tch::Device::Cpu] {
            let mut t = Tensor::from_slice(&[1.0f64, -2.0, 3.5]).to_device(dev);
            g.all_reduce(&mut t, ReduceOp::Sum).unwrap();
            g.broadcast(&mut t, 0).unwrap();
            assert_eq!(t.device(), dev);
            assert_eq!(Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu)).unwrap(), vec![1.0, -2.0, 3.5]);
            let input = Tensor::from_slice(&[4i64, 5]).to_device(dev);
            let mut out = Tensor::zeros([2], (Kind::Int64, dev));
            g.all_gather(&mut out, &input).unwrap();
            assert_eq!(Vec::<i64>::try_from(&out.to_device(tch::Device::Cpu)).unwrap(), vec![4, 5]);
            let mut shard = Tensor::zeros([2], (Kind::Float, dev));
            g.reduce_scatter(&mut shard, &Tensor::from_slice(&[0.5f32, 1.5]).to_device(dev), ReduceOp::Max).unwrap();
            assert_eq!(Vec::<f32>::try_from(&shard.to_device(tch::Device::Cpu)).unwrap(), vec![0.5, 1.5]);
            g.barrier().unwrap();
        }
        assert_eq!(g.sum_f64(&[2.5]).unwrap(), vec![2.5]);
    }
}

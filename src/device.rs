//! Run-time device selection: `cpu` (burn's flex backend), `cuda[:N]` (with the `cuda` feature)
//! or `cubecl-cpu` (CubeCL's CPU runtime, with the `cubecl-cpu` feature: the CubeCL kernels and
//! fusion of the GPU path, compiled through LLVM for the CPU; what tests the GPU code path here).
//!
//! Before handing `cuda:N` to burn, the driver is asked directly how many GPUs it has
//! ([`cuda_device_count`]) and the CUDA math library that kernels link is looked for
//! ([`libdevice`]): cudarc panics when `libcuda` cannot be loaded, cubecl then unwraps a closed
//! channel, and a missing `libdevice.10.bc` only shows when the first kernel that needs it is
//! compiled. Both checks are compiled in every build so that they are tested on machines
//! without a GPU.

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{DType, Device};
use std::path::{Path, PathBuf};

pub fn parse(spec: &str) -> Result<Device> {
    match spec.split_once(':') {
        None if spec == "cpu" => Ok(Device::flex()),
        None if spec == "cuda" => cuda(0),
        None if spec == "cubecl-cpu" => cubecl_cpu(),
        Some(("cuda", index)) => cuda(
            index
                .parse()
                .with_context(|| format!("device {spec:?}: {index:?} is not a GPU index"))?,
        ),
        _ => bail!("unknown device {spec:?} (expected cpu, cuda, cuda:N or cubecl-cpu)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    check_cuda_index(index, cuda_device_count()?)?;
    libdevice()?;
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    bail!(
        "this build has no CUDA support: rebuild with `scripts/setup-llvm.sh && \
         cargo build --release --locked --features cuda` (see README, \"GPU\")"
    )
}

#[cfg(feature = "cubecl-cpu")]
fn cubecl_cpu() -> Result<Device> {
    Ok(Device::cpu())
}

#[cfg(not(feature = "cubecl-cpu"))]
fn cubecl_cpu() -> Result<Device> {
    bail!(
        "this build has no CubeCL CPU runtime: rebuild with `scripts/setup-llvm.sh && \
         cargo build --release --locked --features cubecl-cpu`"
    )
}

/// The NVIDIA driver's library, by the soname every driver installation has. (cudarc tries
/// `libcuda.so` first, which can also be the CUDA toolkit's link-time stub; a stub is no driver.)
pub const LIBCUDA: &str = "libcuda.so.1";

/// How many GPUs the NVIDIA driver sees (after `CUDA_VISIBLE_DEVICES`), asked through
/// `libcuda.so.1` with `cuInit` and `cuDeviceGetCount`, so that a machine without the driver
/// or without a GPU gets an error rather than a panic.
pub fn cuda_device_count() -> Result<usize> {
    let libcuda = driver::Libcuda::open().map_err(|dlerror| {
        anyhow!(
            "no NVIDIA driver: {LIBCUDA} cannot be loaded: {dlerror}; --device cuda needs the \
             NVIDIA driver"
        )
    })?;
    libcuda.device_count().map_err(|error| match error {
        driver::Error::Symbol(message) => {
            anyhow!("{LIBCUDA} is not a usable NVIDIA driver library: {message}")
        }
        driver::Error::Cuda { call, code, name } => {
            let hint = match code {
                100 => "; the driver sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
                803 => {
                    "; the driver library and the loaded kernel module differ in version \
                        (reboot, or reinstall the driver)"
                }
                999 => "; see `nvidia-smi` and the kernel log (dmesg)",
                _ => "",
            };
            anyhow!("the NVIDIA driver ({LIBCUDA}) failed: {call} returned {code} ({name}){hint}")
        }
    })
}

/// Refuses `cuda:index` past the last of `count` GPUs, naming the ones there are.
pub fn check_cuda_index(index: usize, count: usize) -> Result<()> {
    if index < count {
        return Ok(());
    }
    let present = match count {
        0 => "no GPU".to_string(),
        1 => "1 GPU (cuda:0)".to_string(),
        2 => "2 GPUs (cuda:0, cuda:1)".to_string(),
        _ => format!("{count} GPUs (cuda:0 to cuda:{})", count - 1),
    };
    let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(value) => format!(" visible with CUDA_VISIBLE_DEVICES={value:?}"),
        Err(_) => String::new(),
    };
    bail!("cuda:{index} but this machine has {present}{visible}")
}

/// Where cubecl-llvm looks for a CUDA toolkit when `CUDA_PATH` is not set: the first of these
/// with an `nvvm/libdevice` directory (cubecl-llvm 0.11.3, `src/nvptx/libdevice.rs`).
const CUDA_ROOTS: [&str; 4] = ["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"];

/// `libdevice.10.bc`, found the way cubecl-llvm's NVPTX backend finds it: under
/// `$CUDA_PATH/nvvm/libdevice/` when `CUDA_PATH` is set, else under the first of
/// [`CUDA_ROOTS`] that has `nvvm/libdevice/`. The backend links it into every kernel that calls
/// sin, cos, tan, asin, acos, atan, atan2, sinh, cosh, tanh, exp, exp2, exp10, log, log2,
/// log10, pow, cbrt or erf (NVPTX has no instruction for them); kernels without those do not
/// need it, but softmax and SiLU call exp, so every model run does.
pub fn libdevice() -> Result<PathBuf> {
    find_libdevice(std::env::var("CUDA_PATH").ok(), &CUDA_ROOTS.map(Path::new))
}

fn find_libdevice(cuda_path: Option<String>, roots: &[&Path]) -> Result<PathBuf> {
    let file = Path::new("nvvm").join("libdevice").join("libdevice.10.bc");
    let looked = match cuda_path {
        Some(root) => {
            let path = Path::new(&root).join(&file);
            if path.is_file() {
                return Ok(path);
            }
            format!("{} does not exist (from CUDA_PATH)", path.display())
        }
        None => match roots
            .iter()
            .find(|root| root.join("nvvm").join("libdevice").is_dir())
        {
            Some(root) => {
                let path = root.join(&file);
                if path.is_file() {
                    return Ok(path);
                }
                format!("CUDA_PATH is not set and {} does not exist", path.display())
            }
            None => format!(
                "CUDA_PATH is not set and none of {} has nvvm/libdevice",
                roots
                    .iter()
                    .map(|root| root.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    bail!(
        "libdevice.10.bc (the CUDA math library) was not found: {looked}. The CUDA backend \
         links it into every kernel that calls exp, log, tanh, sin, cos, pow, erf or a similar \
         function; softmax and SiLU call exp, so every model needs it. Install it with \
         `python3 -m pip install nvidia-cuda-nvcc-cu12` and set \
         CUDA_PATH=\"$(python3 -c 'import nvidia.cuda_nvcc as m; print(m.__path__[0])')\", or \
         point CUDA_PATH at a CUDA toolkit"
    )
}

#[cfg(unix)]
mod driver {
    use super::LIBCUDA;
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

    pub enum Error {
        /// The library lacks a function every CUDA driver exports.
        Symbol(String),
        /// A driver call returned this `CUresult`.
        Cuda {
            call: &'static str,
            code: c_int,
            name: String,
        },
    }

    /// A `dlopen` handle on the driver library. Never closed: cudarc opens the same library
    /// right after, and unloading a driver that was initialised is not worth the risk.
    pub struct Libcuda(*mut c_void);

    /// The last `dlerror`, or a placeholder when there is none.
    fn dlerror() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated string that stays valid until the
        // next dl* call on this thread; it is copied at once.
        let message = unsafe { libc::dlerror() };
        if message.is_null() {
            "unknown dlopen error".to_string()
        } else {
            // SAFETY: non-null, NUL-terminated (see above).
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        }
    }

    impl Libcuda {
        pub fn open() -> Result<Self, String> {
            let name = CString::new(LIBCUDA).expect("no NUL in the library name");
            // SAFETY: `name` is NUL-terminated and outlives the call. Loading libcuda runs only
            // its initialisers, which do not touch the GPU (cuInit does).
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if handle.is_null() {
                Err(dlerror())
            } else {
                Ok(Self(handle))
            }
        }

        fn symbol(&self, name: &CStr) -> Result<*mut c_void, Error> {
            // SAFETY: the handle is live (never closed) and `name` is NUL-terminated.
            let symbol = unsafe { libc::dlsym(self.0, name.as_ptr()) };
            if symbol.is_null() {
                Err(Error::Symbol(format!(
                    "{}: {}",
                    name.to_string_lossy(),
                    dlerror()
                )))
            } else {
                Ok(symbol)
            }
        }

        /// `cuGetErrorName`, which the driver answers without `cuInit`.
        fn error_name(&self, code: c_int) -> String {
            type GetErrorName = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
            let Ok(symbol) = self.symbol(c"cuGetErrorName") else {
                return "unknown CUresult".to_string();
            };
            // SAFETY: cuGetErrorName has this signature in every CUDA driver API version.
            let get = unsafe { std::mem::transmute::<*mut c_void, GetErrorName>(symbol) };
            let mut name: *const c_char = std::ptr::null();
            // SAFETY: `name` is a valid out-pointer; on success it points at a static string.
            if unsafe { get(code, &mut name) } != 0 || name.is_null() {
                return "unknown CUresult".to_string();
            }
            // SAFETY: a static NUL-terminated string owned by the driver.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        }

        /// `cuInit(0)`, then `cuDeviceGetCount`.
        pub fn device_count(&self) -> Result<usize, Error> {
            type Init = unsafe extern "C" fn(c_uint) -> c_int;
            type DeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
            let init = self.symbol(c"cuInit")?;
            let device_get_count = self.symbol(c"cuDeviceGetCount")?;
            // SAFETY: these are the driver API's signatures (CUresult is a C enum, an int).
            let (init, device_get_count) = unsafe {
                (
                    std::mem::transmute::<*mut c_void, Init>(init),
                    std::mem::transmute::<*mut c_void, DeviceGetCount>(device_get_count),
                )
            };
            let fail = |call, code| Error::Cuda {
                call,
                code,
                name: self.error_name(code),
            };
            // SAFETY: cuInit takes a flags word that must be 0; it may be called repeatedly.
            let code = unsafe { init(0) };
            if code != 0 {
                return Err(fail("cuInit", code));
            }
            let mut count: c_int = 0;
            // SAFETY: `count` is a valid out-pointer; the driver is initialised.
            let code = unsafe { device_get_count(&mut count) };
            if code != 0 {
                return Err(fail("cuDeviceGetCount", code));
            }
            Ok(usize::try_from(count).unwrap_or(0))
        }
    }
}

#[cfg(not(unix))]
mod driver {
    pub enum Error {
        Symbol(String),
        Cuda {
            call: &'static str,
            code: i32,
            name: String,
        },
    }

    pub struct Libcuda;

    impl Libcuda {
        pub fn open() -> Result<Self, String> {
            Err("CUDA is supported on Linux only here".to_string())
        }

        pub fn device_count(&self) -> Result<usize, Error> {
            unreachable!("never opened")
        }
    }
}

pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => bail!("unknown dtype {spec:?} (expected f32, f16 or bf16)"),
    }
}

/// Keeps freed memory in the process instead of handing it back to the kernel.
///
/// Training allocates and frees the same large activation buffers every step; glibc serves
/// blocks above its mmap threshold with fresh `mmap`s, so every step paid page faults and page
/// zeroing for them. With mmap off and no trimming, the buffers are reused: ~20% more training
/// tokens/s on SmolLM2 (2 cores), same peak memory. Call once, before the first allocation of
/// tensors.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_a_driver_is_a_clear_error() {
        if let Ok(_libcuda) = driver::Libcuda::open() {
            eprintln!("skipped: {LIBCUDA} loads on this machine, so it has an NVIDIA driver");
            return;
        }
        let message = format!("{:#}", cuda_device_count().unwrap_err());
        assert!(
            message.starts_with(&format!("no NVIDIA driver: {LIBCUDA} cannot be loaded: ")),
            "{message}"
        );
        assert!(
            message.ends_with("; --device cuda needs the NVIDIA driver"),
            "{message}"
        );

        // Without the driver, asking for a GPU is an error (not a panic) in every build.
        for spec in ["cuda", "cuda:3"] {
            let message = format!("{:#}", parse(spec).unwrap_err());
            let expected = if cfg!(feature = "cuda") {
                "no NVIDIA driver: "
            } else {
                "this build has no CUDA support: "
            };
            assert!(message.starts_with(expected), "{spec}: {message}");
        }
    }

    #[test]
    fn a_gpu_index_past_the_last_names_the_gpus_there_are() {
        assert!(check_cuda_index(0, 1).is_ok());
        assert!(check_cuda_index(7, 8).is_ok());
        let message = |index, count| check_cuda_index(index, count).unwrap_err().to_string();
        let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(value) => format!(" visible with CUDA_VISIBLE_DEVICES={value:?}"),
            Err(_) => String::new(),
        };
        assert_eq!(
            message(3, 1),
            format!("cuda:3 but this machine has 1 GPU (cuda:0){visible}")
        );
        assert_eq!(
            message(2, 2),
            format!("cuda:2 but this machine has 2 GPUs (cuda:0, cuda:1){visible}")
        );
        assert_eq!(
            message(9, 4),
            format!("cuda:9 but this machine has 4 GPUs (cuda:0 to cuda:3){visible}")
        );
        assert_eq!(
            message(0, 0),
            format!("cuda:0 but this machine has no GPU{visible}")
        );
    }

    #[test]
    fn device_specs_that_are_not_devices_are_refused() {
        let message = |spec| format!("{:#}", parse(spec).unwrap_err());
        assert!(message("cuda:x").contains("\"x\" is not a GPU index"));
        assert!(message("gpu").contains("unknown device \"gpu\""));
        assert!(parse("cpu").is_ok());
    }

    #[test]
    fn libdevice_is_looked_for_where_cubecl_looks() {
        let dir = tempfile::tempdir().unwrap();
        let toolkit = dir.path().join("toolkit");
        let empty = dir.path().join("empty");
        let libdevice_dir = toolkit.join("nvvm").join("libdevice");
        std::fs::create_dir_all(&libdevice_dir).unwrap();
        std::fs::create_dir_all(empty.join("nvvm").join("libdevice")).unwrap();
        let bitcode = libdevice_dir.join("libdevice.10.bc");
        std::fs::write(&bitcode, b"BC").unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_string();

        // CUDA_PATH wins, and only it is looked at.
        assert_eq!(
            find_libdevice(Some(path(&toolkit)), &[empty.as_path()]).unwrap(),
            bitcode
        );
        let message = find_libdevice(Some(path(&empty)), &[toolkit.as_path()])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!(
                "{} does not exist (from CUDA_PATH)",
                empty.join("nvvm/libdevice/libdevice.10.bc").display()
            )),
            "{message}"
        );
        assert!(
            message.contains("pip install nvidia-cuda-nvcc-cu12"),
            "{message}"
        );

        // Without CUDA_PATH: the first root that has nvvm/libdevice, even if the file is
        // missing there.
        assert_eq!(
            find_libdevice(None, &[dir.path(), toolkit.as_path()]).unwrap(),
            bitcode
        );
        let message = find_libdevice(None, &[empty.as_path(), toolkit.as_path()])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!(
                "CUDA_PATH is not set and {} does not exist",
                empty.join("nvvm/libdevice/libdevice.10.bc").display()
            )),
            "{message}"
        );
        let message = find_libdevice(None, &[dir.path()]).unwrap_err().to_string();
        assert!(
            message.contains("CUDA_PATH is not set and none of"),
            "{message}"
        );
    }
}

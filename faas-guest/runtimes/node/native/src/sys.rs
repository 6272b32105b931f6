//! Everything unsafe in the addon: the N-API C ABI and the system calls.
//!
//! The `napi_*` functions are declared here by hand (N-API is a stable C ABI,
//! <https://nodejs.org/api/n-api.html>) and left undefined in the shared
//! object: they resolve from the `node` binary, which exports them, when Node
//! `dlopen()`s the addon. Node then calls [`napi_register_module_v1`].
//!
//! The rest of the crate sees only safe wrappers: [`Cx`] (one call from
//! JavaScript: its arguments and the values it creates) and a handful of
//! system calls on file descriptors.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;

use crate::Error;

// ---------------------------------------------------------------------------
// N-API declarations (js_native_api_types.h, js_native_api.h, node_api.h)

#[repr(C)]
struct OpaqueEnv {
    _p: [u8; 0],
}
#[repr(C)]
struct OpaqueValue {
    _p: [u8; 0],
}
#[repr(C)]
struct OpaqueCallbackInfo {
    _p: [u8; 0],
}

type NapiEnv = *mut OpaqueEnv;
type NapiValue = *mut OpaqueValue;
type NapiCallbackInfo = *mut OpaqueCallbackInfo;
/// `napi_status`, a C enum.
type NapiStatus = c_int;
type NapiCallback = Option<unsafe extern "C" fn(NapiEnv, NapiCallbackInfo) -> NapiValue>;

const NAPI_OK: NapiStatus = 0;
const NAPI_NUMBER_EXPECTED: NapiStatus = 6;
/// `NAPI_AUTO_LENGTH`: the name is NUL-terminated.
const NAPI_AUTO_LENGTH: usize = usize::MAX;
/// The N-API version this addon is written against (Node.js 20 has 9).
const NAPI_VERSION: i32 = 8;

// SAFETY: these declarations match the C prototypes of js_native_api.h and
// node_api.h (N-API version 8; all of them exist since version 1) for the
// x86-64 and aarch64 Linux C ABI: opaque pointers, size_t as usize, int32_t as
// i32, double as f64, bool as bool, napi_status as int.
unsafe extern "C" {
    fn napi_create_function(
        env: NapiEnv,
        utf8name: *const c_char,
        length: usize,
        cb: NapiCallback,
        data: *mut c_void,
        result: *mut NapiValue,
    ) -> NapiStatus;
    fn napi_set_named_property(
        env: NapiEnv,
        object: NapiValue,
        utf8name: *const c_char,
        value: NapiValue,
    ) -> NapiStatus;
    fn napi_get_cb_info(
        env: NapiEnv,
        cbinfo: NapiCallbackInfo,
        argc: *mut usize,
        argv: *mut NapiValue,
        this_arg: *mut NapiValue,
        data: *mut *mut c_void,
    ) -> NapiStatus;
    fn napi_get_value_double(env: NapiEnv, value: NapiValue, result: *mut f64) -> NapiStatus;
    fn napi_is_buffer(env: NapiEnv, value: NapiValue, result: *mut bool) -> NapiStatus;
    fn napi_get_buffer_info(
        env: NapiEnv,
        value: NapiValue,
        data: *mut *mut c_void,
        length: *mut usize,
    ) -> NapiStatus;
    fn napi_create_buffer(
        env: NapiEnv,
        size: usize,
        data: *mut *mut c_void,
        result: *mut NapiValue,
    ) -> NapiStatus;
    fn napi_create_buffer_copy(
        env: NapiEnv,
        length: usize,
        data: *const c_void,
        result_data: *mut *mut c_void,
        result: *mut NapiValue,
    ) -> NapiStatus;
    fn napi_create_object(env: NapiEnv, result: *mut NapiValue) -> NapiStatus;
    fn napi_create_double(env: NapiEnv, value: f64, result: *mut NapiValue) -> NapiStatus;
    fn napi_get_undefined(env: NapiEnv, result: *mut NapiValue) -> NapiStatus;
    fn napi_is_exception_pending(env: NapiEnv, result: *mut bool) -> NapiStatus;
    fn napi_throw_error(env: NapiEnv, code: *const c_char, msg: *const c_char) -> NapiStatus;
    fn napi_throw_type_error(env: NapiEnv, code: *const c_char, msg: *const c_char) -> NapiStatus;
    fn napi_throw_range_error(env: NapiEnv, code: *const c_char, msg: *const c_char) -> NapiStatus;
}

/// A JavaScript value, valid during the call that produced it.
#[derive(Clone, Copy)]
pub(crate) struct Value(NapiValue);

/// One call from JavaScript into the addon.
///
/// Values and byte slices obtained from it live no longer than the call: the
/// borrow of `self` ties them to it, and no JavaScript runs while the addon
/// holds them (so a Buffer's memory cannot be detached or freed meanwhile).
pub(crate) struct Cx {
    env: NapiEnv,
    argv: [NapiValue; MAX_ARGS],
    argc: usize,
}

const MAX_ARGS: usize = 4;

fn check(status: NapiStatus, what: &str) -> Result<(), Error> {
    match status {
        NAPI_OK => Ok(()),
        NAPI_NUMBER_EXPECTED => Err(Error::Type(format!("{what}: a number is expected"))),
        s => Err(Error::Other(format!(
            "{what}: N-API call failed (napi_status {s})"
        ))),
    }
}

impl Cx {
    fn arg(&self, i: usize, what: &str) -> Result<NapiValue, Error> {
        if i < self.argc.min(MAX_ARGS) {
            Ok(self.argv[i])
        } else {
            Err(Error::Type(format!(
                "{what}: argument {} is missing",
                i + 1
            )))
        }
    }

    /// Argument `i` as a number (a TypeError when it is not one).
    pub(crate) fn number(&self, i: usize, what: &str) -> Result<f64, Error> {
        let v = self.arg(i, what)?;
        let mut out = 0f64;
        // SAFETY: `env` and `v` come from this call's napi_get_cb_info; `out`
        // is a valid f64 to write.
        let status = unsafe { napi_get_value_double(self.env, v, &mut out) };
        check(status, what)?;
        Ok(out)
    }

    /// Argument `i` as the bytes of a Buffer (a TypeError when it is not one).
    pub(crate) fn bytes(&self, i: usize, what: &str) -> Result<&[u8], Error> {
        let v = self.arg(i, what)?;
        let mut is = false;
        // SAFETY: `env` and `v` come from this call; `is` is a valid bool.
        check(unsafe { napi_is_buffer(self.env, v, &mut is) }, what)?;
        if !is {
            return Err(Error::Type(format!("{what}: a Buffer is expected")));
        }
        let mut data: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: `v` is a Buffer of this call; both out-pointers are valid.
        let status = unsafe { napi_get_buffer_info(self.env, v, &mut data, &mut len) };
        check(status, what)?;
        if len == 0 || data.is_null() {
            return Ok(&[]);
        }
        // SAFETY: N-API reports `len` readable bytes at `data`, the Buffer's
        // backing store. The Buffer is an argument of this call, so it stays
        // alive until the call returns, and no JavaScript runs before then
        // (nothing can detach or resize it); the slice borrows `self`, so it
        // cannot outlive the call. The addon only reads through it.
        Ok(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
    }

    /// A new Buffer holding a copy of `bytes`.
    pub(crate) fn buffer_copy(&self, bytes: &[u8]) -> Result<Value, Error> {
        let mut out: NapiValue = ptr::null_mut();
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: `bytes` is valid for `bytes.len()` reads (N-API copies
        // them); the out-pointers are valid.
        let status = unsafe {
            napi_create_buffer_copy(
                self.env,
                bytes.len(),
                bytes.as_ptr().cast::<c_void>(),
                &mut data,
                &mut out,
            )
        };
        check(status, "creating a Buffer")?;
        Ok(Value(out))
    }

    /// A new Buffer of `len` bytes, filled by `fill` (which must write all of
    /// them; the memory starts uninitialised in Node, zeroed here).
    pub(crate) fn buffer_filled(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<Value, Error> {
        let mut out: NapiValue = ptr::null_mut();
        let mut data: *mut c_void = ptr::null_mut();
        // SAFETY: the out-pointers are valid.
        let status = unsafe { napi_create_buffer(self.env, len, &mut data, &mut out) };
        check(status, "creating a Buffer")?;
        if len > 0 && !data.is_null() {
            // SAFETY: napi_create_buffer returned a new Buffer whose `len`
            // bytes start at `data`. Nothing else refers to that memory yet
            // (the Buffer has not been handed to JavaScript), so this is the
            // only reference to it; it lives while the Buffer does, i.e. at
            // least until this call returns. The bytes may be uninitialised,
            // so they are zeroed through a raw pointer before a slice is made.
            let slice = unsafe {
                ptr::write_bytes(data.cast::<u8>(), 0, len);
                std::slice::from_raw_parts_mut(data.cast::<u8>(), len)
            };
            fill(slice)?;
        } else {
            fill(&mut [])?;
        }
        Ok(Value(out))
    }

    /// A new plain object with the given properties.
    pub(crate) fn object(&self, props: &[(&CStr, Value)]) -> Result<Value, Error> {
        let mut out: NapiValue = ptr::null_mut();
        // SAFETY: the out-pointer is valid.
        let status = unsafe { napi_create_object(self.env, &mut out) };
        check(status, "creating an object")?;
        for (name, v) in props {
            // SAFETY: `out` and `v.0` are values of this call; `name` is
            // NUL-terminated.
            let status = unsafe { napi_set_named_property(self.env, out, name.as_ptr(), v.0) };
            check(status, "setting a property")?;
        }
        Ok(Value(out))
    }

    /// A number.
    pub(crate) fn new_number(&self, n: f64) -> Result<Value, Error> {
        let mut out: NapiValue = ptr::null_mut();
        // SAFETY: the out-pointer is valid.
        let status = unsafe { napi_create_double(self.env, n, &mut out) };
        check(status, "creating a number")?;
        Ok(Value(out))
    }

    /// `undefined`.
    pub(crate) fn undefined(&self) -> Result<Value, Error> {
        let mut out: NapiValue = ptr::null_mut();
        // SAFETY: the out-pointer is valid.
        let status = unsafe { napi_get_undefined(self.env, &mut out) };
        check(status, "undefined")?;
        Ok(Value(out))
    }

    /// Throws `e` as a JavaScript exception (unless one is already pending).
    fn throw(&self, e: &Error) {
        let mut pending = false;
        // SAFETY: the out-pointer is valid.
        let status = unsafe { napi_is_exception_pending(self.env, &mut pending) };
        if status == NAPI_OK && pending {
            return;
        }
        let (code, msg) = e.code_and_message();
        let code = c_string(code);
        let msg = c_string(&msg);
        // SAFETY: both strings are NUL-terminated and outlive the calls (N-API
        // copies them). A failure to throw leaves nothing else to do.
        unsafe {
            match e {
                Error::Type(_) => napi_throw_type_error(self.env, code.as_ptr(), msg.as_ptr()),
                Error::Range(_) => napi_throw_range_error(self.env, code.as_ptr(), msg.as_ptr()),
                _ => napi_throw_error(self.env, code.as_ptr(), msg.as_ptr()),
            };
        }
    }
}

/// `s` as a C string (interior NULs, which never occur here, become `?`).
fn c_string(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', "?")).unwrap_or_default()
}

/// A function exported to JavaScript.
pub(crate) type Method = fn(&Cx) -> Result<Value, Error>;

/// The one C callback behind every exported function; `data` points at the
/// [`Method`] it stands for (an entry of [`crate::METHODS`]).
unsafe extern "C" fn trampoline(env: NapiEnv, info: NapiCallbackInfo) -> NapiValue {
    let mut cx = Cx {
        env,
        argv: [ptr::null_mut(); MAX_ARGS],
        argc: MAX_ARGS,
    };
    let mut data: *mut c_void = ptr::null_mut();
    // SAFETY: Node calls this with a valid env and callback info; `argc` says
    // `argv` has room for MAX_ARGS values (N-API writes at most that many and
    // sets `argc` to the number the caller passed); `data` is a valid
    // out-pointer.
    let status = unsafe {
        napi_get_cb_info(
            env,
            info,
            &mut cx.argc,
            cx.argv.as_mut_ptr(),
            ptr::null_mut(),
            &mut data,
        )
    };
    let result = check(status, "reading the arguments").and_then(|()| {
        if data.is_null() {
            return Err(Error::Other("addon function without its method".into()));
        }
        // SAFETY: `data` is what register() passed to napi_create_function:
        // a pointer to a `Method` inside the static METHODS table, which
        // lives as long as the program.
        let method: Method = unsafe { *data.cast::<Method>() };
        method(&cx)
    });
    match result {
        Ok(v) => v.0,
        Err(e) => {
            cx.throw(&e);
            ptr::null_mut()
        }
    }
}

/// The entry point Node looks up after `dlopen()`: puts the methods on
/// `exports`.
///
/// # Safety
///
/// Called by Node only, with a valid env and exports object.
#[unsafe(no_mangle)]
unsafe extern "C" fn napi_register_module_v1(env: NapiEnv, exports: NapiValue) -> NapiValue {
    for (name, method) in crate::METHODS.iter() {
        let mut f: NapiValue = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `data` points into the static
        // METHODS table (read-only, lives forever), which trampoline() reads
        // back; the out-pointer is valid.
        let status = unsafe {
            napi_create_function(
                env,
                name.as_ptr(),
                NAPI_AUTO_LENGTH,
                Some(trampoline),
                ptr::from_ref::<Method>(method).cast_mut().cast::<c_void>(),
                &mut f,
            )
        };
        if status != NAPI_OK {
            return ptr::null_mut();
        }
        // SAFETY: `exports` is the object Node passed; `f` was just created.
        if unsafe { napi_set_named_property(env, exports, name.as_ptr(), f) } != NAPI_OK {
            return ptr::null_mut();
        }
    }
    exports
}

/// The N-API version the addon is written against (Node ≥ 20 asks for it).
#[unsafe(no_mangle)]
extern "C" fn node_api_module_get_api_version_v1() -> i32 {
    NAPI_VERSION
}

// ---------------------------------------------------------------------------
// System calls

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Takes ownership of `fd` (closing it when dropped).
///
/// The caller (JavaScript) hands the fd over: it must not use it afterwards.
pub(crate) fn own_fd(fd: RawFd) -> Result<OwnedFd, Error> {
    if fd < 0 {
        return Err(Error::Range(format!("fd {fd} is not a file descriptor")));
    }
    // SAFETY: `fd` is not -1 (OwnedFd's niche). Whether it is open and not
    // owned elsewhere is the JavaScript caller's contract (the addon's API
    // hands fds over); a wrong fd is an I/O error, never memory unsafety.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// close(2), reporting its error (unlike dropping an OwnedFd).
pub(crate) fn close(fd: RawFd) -> io::Result<()> {
    // SAFETY: close(2) on any integer is memory-safe; the caller gives up `fd`.
    if unsafe { libc::close(fd) } == 0 {
        return Ok(());
    }
    let e = last_error();
    // Linux has released the fd even when close is interrupted.
    if e.raw_os_error() == Some(libc::EINTR) {
        Ok(())
    } else {
        Err(e)
    }
}

/// What one recvmsg(2) produced.
pub(crate) struct Received {
    /// Bytes of the datagram stored in the buffer.
    pub(crate) len: usize,
    /// The datagram was longer than the buffer (`MSG_TRUNC`) or its control
    /// data did not fit (`MSG_CTRUNC`).
    pub(crate) truncated: bool,
    /// The fds that came with it (close-on-exec), owned.
    pub(crate) fds: Vec<OwnedFd>,
}

/// Room for the control message of one SCM_RIGHTS fd, as `u64`s for
/// `cmsghdr` alignment. (On 64-bit Linux the padding leaves room for a second
/// fd, which the caller then sees and refuses; more set `MSG_CTRUNC`.)
const CONTROL_WORDS: usize = 4;

/// One recvmsg(2) on `sock` into `buf`, with room for one SCM_RIGHTS fd,
/// `MSG_CMSG_CLOEXEC`. No retry on EINTR.
pub(crate) fn recvmsg(sock: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: CMSG_SPACE is pure arithmetic on a constant.
    let space = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
    let mut control = [0u64; CONTROL_WORDS];
    debug_assert!(space <= size_of::<[u64; CONTROL_WORDS]>());
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = space.min(size_of::<[u64; CONTROL_WORDS]>()) as _;
    // SAFETY: `msg` points at one iovec covering `buf` (writable, its length)
    // and at `control` (writable, at least `msg_controllen` bytes, aligned
    // for cmsghdr); all outlive the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(last_error());
    }
    let mut fds = Vec::new();
    // SAFETY: after a successful recvmsg, `msg.msg_control`/`msg_controllen`
    // describe the control messages the kernel wrote into `control`;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within it and return null at its end.
    // For an SCM_RIGHTS message, the data after the header holds
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) fds, installed in this process
    // and owned by no one else yet; they are read unaligned (CMSG_DATA is
    // only 8-byte aligned by construction, but read_unaligned needs nothing).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = (c.cmsg_len as usize).saturating_sub(header) / size_of::<c_int>();
                let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                for i in 0..count {
                    let fd = ptr::read_unaligned(data.add(i));
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: (n as usize).min(buf.len()),
        truncated: msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0,
        fds,
    })
}

/// One sendmsg(2) of `data` on `sock` (`MSG_NOSIGNAL`), with `fd` as
/// SCM_RIGHTS when given. No retry on EINTR.
pub(crate) fn sendmsg(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; `control` is aligned
        // for cmsghdr and CMSG_SPACE(sizeof(int)) (24 on 64-bit) fits its 32
        // bytes, so CMSG_FIRSTHDR is non-null and the header and one int of
        // data written through it stay inside `control`.
        unsafe {
            let space = libc::CMSG_SPACE(size_of::<c_int>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast::<c_void>();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
            ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        }
    }
    // SAFETY: `msg` points at one iovec covering `data` (readable; the kernel
    // does not write through it) and, if set, at `control`; all outlive the
    // call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(last_error())
    } else {
        Ok(n as usize)
    }
}

/// memfd_create(2) with `flags`.
pub(crate) fn memfd_create(name: &CStr, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; memfd_create reads only it.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(last_error());
    }
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fcntl(F_ADD_SEALS).
pub(crate) fn add_seals(fd: &OwnedFd, seals: c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_ADD_SEALS takes an int argument and touches no memory.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

/// fcntl(F_GET_SEALS) (fails with EINVAL on anything but a memfd/shmem file).
pub(crate) fn get_seals(fd: &OwnedFd) -> io::Result<c_int> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GET_SEALS takes no argument and touches no memory.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 { Err(last_error()) } else { Ok(r) }
}

//! Set elements straight to nf_tables over netlink: the bulk path of the nftables
//! backend.
//!
//! `nft -f` spends nearly all of a large load in its own parser and evaluation: measured
//! with nft 1.0.6 on 100,000 addresses with timeouts, `nft -f` takes 0.37 s and
//! `nft -c -f` (which parses and evaluates but commits nothing) 0.44 s. The kernel itself
//! takes the same elements in a fraction of that. So the elements of banshare's address
//! sets (hash sets of single addresses: the bulk of every import, feed pull and restart)
//! go to the kernel as netlink messages built here, one batch per transaction, exactly
//! as nft would send them; the table, chains, rules and the interval sets of networks
//! (few, and with nft's interval handling) stay with `nft`.
//!
//! A batch is `NFNL_MSG_BATCH_BEGIN`, then `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM`
//! messages (a `DELSETELEM` without elements flushes the set), then
//! `NFNL_MSG_BATCH_END`. The kernel applies all of it or none of it, and acknowledges
//! each message (`NLM_F_ACK`), with the errno of each one it refused.
//!
//! The ipset backend fills its fresh sets the same way ([`Batch::ipset`]): `IPSET_CMD_ADD`
//! messages of up to about 1,900 entries each, as `ipset restore` would send one entry at
//! a time. ipset has no transactions; its sets are filled while no rule uses them and
//! swapped in by `ipset`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send, setsockopt, socket,
    sockopt,
};

use super::FirewallError;

const NFNL_SUBSYS_IPSET: u16 = 6;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;

const IPSET_CMD_ADD: u16 = 9;
const IPSET_PROTOCOL: u8 = 7;
const IPSET_ATTR_PROTOCOL: u16 = 1;
const IPSET_ATTR_SETNAME: u16 = 2;
const IPSET_ATTR_DATA: u16 = 7;
const IPSET_ATTR_ADT: u16 = 8;
const IPSET_ATTR_LINENO: u16 = 9;
const IPSET_ATTR_IP: u16 = 1;
const IPSET_ATTR_CIDR: u16 = 3;
const IPSET_ATTR_TIMEOUT: u16 = 6;
const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
const IPSET_ATTR_IPADDR_IPV6: u16 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// Only the header of a refused message comes back in its error, not the whole message.
const NETLINK_CAP_ACK: libc::c_int = 10;

/// An attribute's length is 16 bits: the element list of one message stays under it.
const MAX_ELEMENTS_BYTES: usize = 60_000;

/// One element of an address set: its address in network byte order (4 or 16 bytes)
/// and its timeout in milliseconds (`None`: permanent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetElement {
    pub key: [u8; 16],
    pub len: u8,
    pub timeout_ms: Option<u64>,
}

impl SetElement {
    pub fn new(addr: std::net::IpAddr, timeout_ms: Option<u64>) -> SetElement {
        let mut key = [0u8; 16];
        let len = match addr {
            std::net::IpAddr::V4(a) => {
                key[..4].copy_from_slice(&a.octets());
                4
            }
            std::net::IpAddr::V6(a) => {
                key.copy_from_slice(&a.octets());
                16
            }
        };
        SetElement { key, len, timeout_ms }
    }

    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.len)]
    }
}

/// One ipset entry: an address or network and its timeout in whole seconds (`0`:
/// permanent, as ipset reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpsetEntry {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
    pub timeout_secs: u32,
}

/// One transaction's messages (or, for ipset, one sequence of messages), built before
/// anything is sent.
#[derive(Debug)]
pub struct Batch {
    /// What the messages change, for error messages (`table inet banshare`, `ipset`).
    what: String,
    table: String,
    /// nf_tables batches are framed by a begin and an end message; ipset's are not.
    framed: bool,
    buf: Vec<u8>,
    /// For each message after the batch start: what it does, for error messages.
    messages: Vec<String>,
}

impl Batch {
    /// An empty transaction on banshare's table `table` (family inet).
    pub fn new(table: &str) -> Batch {
        let mut b = Batch {
            what: format!("table inet {table}"),
            table: table.to_string(),
            framed: true,
            buf: Vec::new(),
            messages: Vec::new(),
        };
        b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0);
        b.nfgen(0, NFNL_SUBSYS_NFTABLES);
        b.finish_message(0);
        b
    }

    /// An empty sequence of ipset messages.
    pub fn ipset() -> Batch {
        Batch { what: "ipset".into(), table: String::new(), framed: false, buf: Vec::new(), messages: Vec::new() }
    }

    /// Adds `entries` (all of one family: `v6`) to the ipset set `set` (an entry already
    /// there gets the new timeout, as with `ipset -exist add`).
    pub fn ipset_add(&mut self, set: &str, v6: bool, entries: &[IpsetEntry]) {
        let begin = |b: &mut Batch| {
            let start = b.buf.len();
            let seq = b.messages.len() as u32 + 1;
            b.header((NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, NLM_F_REQUEST | NLM_F_ACK, seq);
            b.nfgen(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }, 0);
            b.attr(IPSET_ATTR_PROTOCOL, &[IPSET_PROTOCOL]);
            b.attr_str(IPSET_ATTR_SETNAME, set);
            // The kernel wants a line number with a list (it reports the failing one there).
            b.attr(IPSET_ATTR_LINENO, &0u32.to_ne_bytes());
            start
        };
        let entry = |b: &mut Batch, e: &IpsetEntry| {
            let data = b.nest(IPSET_ATTR_DATA);
            let ip = b.nest(IPSET_ATTR_IP);
            match e.addr {
                std::net::IpAddr::V4(a) => b.attr(IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &a.octets()),
                std::net::IpAddr::V6(a) => b.attr(IPSET_ATTR_IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &a.octets()),
            }
            b.end_nest(ip);
            b.attr(IPSET_ATTR_CIDR, &[e.prefix]);
            b.attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, &e.timeout_secs.to_be_bytes());
            b.end_nest(data);
        };
        self.messages_of(entries, begin, IPSET_ATTR_ADT, entry, |n| format!("add {n} entries to set {set}"));
    }

    /// What each message does, in order.
    pub fn descriptions(&self) -> &[String] {
        &self.messages
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Empties `set`.
    pub fn flush(&mut self, set: &str) {
        let start = self.begin_message(NFT_MSG_DELSETELEM, 0, set);
        self.finish_message(start);
        self.messages.push(format!("flush set {set}"));
    }

    /// Adds `elements` to `set` (an element already there keeps its timeout).
    pub fn add(&mut self, set: &str, elements: &[SetElement]) {
        self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add", set, elements);
    }

    /// Deletes `elements` from `set` (each must be there, or the batch is refused).
    pub fn delete(&mut self, set: &str, elements: &[SetElement]) {
        self.elements(NFT_MSG_DELSETELEM, 0, "delete", set, elements);
    }

    /// The wire bytes, with the batch end.
    fn finish(&self) -> Vec<u8> {
        if !self.framed {
            return self.buf.clone();
        }
        let mut b = Batch::ipset();
        b.buf = self.buf.clone();
        let seq = self.messages.len() as u32 + 1;
        let start = b.buf.len();
        b.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq);
        b.nfgen(0, NFNL_SUBSYS_NFTABLES);
        b.finish_message(start);
        b.buf
    }

    fn elements(&mut self, msg: u16, flags: u16, verb: &str, set: &str, elements: &[SetElement]) {
        let element = |b: &mut Batch, e: &SetElement| {
            let item = b.nest(NFTA_LIST_ELEM);
            if let Some(ms) = e.timeout_ms {
                b.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
            }
            let key = b.nest(NFTA_SET_ELEM_KEY);
            b.attr(NFTA_DATA_VALUE, e.key());
            b.end_nest(key);
            b.end_nest(item);
        };
        let begin = |b: &mut Batch| b.begin_message(msg, flags, set);
        self.messages_of(elements, begin, NFTA_SET_ELEM_LIST_ELEMENTS, element, |n| {
            format!("{verb} {n} elements in set {set}")
        });
    }

    /// As many messages as `items` take: each begun by `begin` (which returns where it
    /// starts), with the items written by `write` in one `list` attribute kept under the
    /// 16-bit attribute length, and described by `describe` (given the item count).
    fn messages_of<T>(
        &mut self,
        items: &[T],
        begin: impl Fn(&mut Batch) -> usize,
        list: u16,
        write: impl Fn(&mut Batch, &T),
        describe: impl Fn(usize) -> String,
    ) {
        let mut rest = items;
        while !rest.is_empty() {
            let start = begin(self);
            let nest = self.nest(list);
            let mut taken = 0;
            for item in rest {
                if self.buf.len() - nest > MAX_ELEMENTS_BYTES {
                    break;
                }
                write(self, item);
                taken += 1;
            }
            self.end_nest(nest);
            self.finish_message(start);
            self.messages.push(describe(taken));
            rest = &rest[taken..];
        }
    }

    fn begin_message(&mut self, msg: u16, flags: u16, set: &str) -> usize {
        let start = self.buf.len();
        let seq = self.messages.len() as u32 + 1;
        self.header((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        self.nfgen(NFPROTO_INET, 0);
        let table = self.table.clone();
        self.attr_str(NFTA_SET_ELEM_LIST_TABLE, &table);
        self.attr_str(NFTA_SET_ELEM_LIST_SET, set);
        start
    }

    fn header(&mut self, ty: u16, flags: u16, seq: u32) {
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish_message
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    }

    fn nfgen(&mut self, family: u8, res_id: u16) {
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn finish_message(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// Sends `batch` as one transaction and waits for the kernel's answer: `Ok` once every
/// message is acknowledged (the transaction is committed), else the first refusal.
pub fn commit(batch: &Batch) -> Result<(), FirewallError> {
    if batch.is_empty() {
        return Ok(());
    }
    let bytes = batch.finish();
    let fd = open(bytes.len())?;
    let sent = send(fd.as_raw_fd(), &bytes, MsgFlags::empty()).map_err(|e| io_error("sending to nf_tables", e))?;
    if sent != bytes.len() {
        return Err(FirewallError::Io {
            context: "sending to nf_tables".into(),
            source: std::io::Error::other(format!("sent {sent} of {} bytes", bytes.len())),
        });
    }
    answers(&fd, batch)
}

/// A netlink socket to nf_tables whose send buffer holds `size` bytes.
fn open(size: usize) -> Result<OwnedFd, FirewallError> {
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
        .map_err(|e| io_error("opening a netlink socket", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| io_error("binding a netlink socket", e))?;
    let want = size.saturating_add(64 * 1024);
    // SO_SNDBUFFORCE needs CAP_NET_ADMIN, which the transaction needs anyway.
    if setsockopt(&fd, sockopt::SndBufForce, &want).is_err() {
        setsockopt(&fd, sockopt::SndBuf, &want).map_err(|e| io_error("sizing the netlink send buffer", e))?;
    }
    let _ = setsockopt(&fd, sockopt::RcvBufForce, &(1usize << 20));
    let one: libc::c_int = 1;
    // SAFETY: a valid socket, an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_NETLINK,
            NETLINK_CAP_ACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %Errno::last(), "NETLINK_CAP_ACK not supported");
    }
    Ok(fd)
}

/// Reads the acknowledgements of `batch`. The kernel processes a batch while `send`
/// runs, so every answer is already queued when it returns: reading never waits.
fn answers(fd: &OwnedFd, batch: &Batch) -> Result<(), FirewallError> {
    let expected = batch.messages.len();
    let mut acked = vec![false; expected + 1];
    let mut count = 0;
    let mut first_error: Option<(u32, i32)> = None;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(io_error("reading nf_tables' answer", e)),
        };
        for (seq, errno) in parse_answers(&buf[..n]) {
            if errno != 0 && first_error.is_none() {
                first_error = Some((seq, -errno));
            }
            let slot = seq as usize;
            if (1..=expected).contains(&slot) && !acked[slot] {
                acked[slot] = true;
                count += 1;
            }
        }
    }
    match first_error {
        Some((seq, raw)) => Err(refusal(batch, seq, raw)),
        None if count == expected => Ok(()),
        None => Err(FirewallError::Command {
            command: format!("netlink messages to {}", batch.what),
            stderr: format!("the kernel acknowledged {count} of {expected} messages"),
        }),
    }
}

/// The (sequence number, error) of each acknowledgement in `data`.
fn parse_answers(data: &[u8]) -> Vec<(u32, i32)> {
    let word = |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= data.len() {
        let len = word(at) as usize;
        let ty = u16::from_ne_bytes(data[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < 16 || at + len > data.len() {
            break;
        }
        // An error (0 for an acknowledgement), then the header of the message it answers.
        if ty == NLMSG_ERROR && len >= 16 + 4 + 16 {
            out.push((word(at + 16 + 4 + 8), word(at + 16) as i32));
        }
        at += len.next_multiple_of(4);
    }
    out
}

fn refusal(batch: &Batch, seq: u32, raw: i32) -> FirewallError {
    let errno = Errno::from_raw(raw);
    if errno == Errno::EPERM {
        return FirewallError::Unavailable(format!("changing {} needs root or CAP_NET_ADMIN", batch.what));
    }
    let what = match (seq as usize).checked_sub(1).and_then(|i| batch.messages.get(i)) {
        Some(m) => format!("`{m}` ({})", batch.what),
        None => format!("the transaction on {}", batch.what),
    };
    // ipset's own codes start at 4096 (IPSET_ERR_PRIVATE); errno's text would be wrong.
    let text = if raw >= 4096 { format!("ipset error {raw}") } else { format!("{} ({errno})", errno.desc()) };
    FirewallError::Command { command: format!("netlink: {what}"), stderr: text }
}

fn io_error(context: &str, e: Errno) -> FirewallError {
    FirewallError::Io { context: context.to_string(), source: std::io::Error::from(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(bytes: &[u8]) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            assert_eq!(len % 4, 0, "messages stay aligned");
            out.push((ty, len as u32));
            at += len;
        }
        assert_eq!(at, bytes.len());
        out
    }

    #[test]
    fn a_batch_is_framed_and_split_under_the_attribute_limit() {
        let mut b = Batch::new("banshare");
        let many: Vec<SetElement> =
            (0..10_000u32).map(|i| SetElement::new(std::net::Ipv4Addr::from(i).into(), Some(3_600_000))).collect();
        b.flush("manual_v4");
        b.add("manual_v4", &many);
        let msgs = messages(&b.finish());
        assert_eq!(msgs.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs.last().unwrap().0, NFNL_MSG_BATCH_END);
        assert_eq!(msgs[1].0, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM);
        // 28 bytes per element with a timeout: about 2,100 per message.
        assert_eq!(msgs.len(), 2 + 1 + 5, "{msgs:?}");
        assert!(msgs.iter().all(|(_, len)| *len < 65_536));
        let total: usize = b.messages[1..].iter().map(|m| m.split(' ').nth(1).unwrap().parse::<usize>().unwrap()).sum();
        assert_eq!(total, 10_000);
    }

    #[test]
    fn ipset_messages_are_unframed_and_split_too() {
        let mut b = Batch::ipset();
        let entries: Vec<IpsetEntry> = (0..5_000u32)
            .map(|i| IpsetEntry { addr: std::net::Ipv4Addr::from(i).into(), prefix: 32, timeout_secs: 60 })
            .collect();
        b.ipset_add("banshare-v4-new", false, &entries);
        let msgs = messages(&b.finish());
        // 32 bytes per entry: about 1,900 per message, no batch begin or end.
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs.iter().all(|(ty, len)| *ty == (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD && *len < 65_536));
    }
}

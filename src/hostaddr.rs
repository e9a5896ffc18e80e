//! The host's own interface addresses, read with `getifaddrs(3)` through nix.
//!
//! The [`crate::decision::Guard`] refuses to block any of them: banning the server's own
//! address can cut the operator off. The daemon refreshes the list periodically because
//! DHCP and SLAAC change addresses while it runs.

use std::net::IpAddr;

/// Every address currently assigned to an interface of this host (all families).
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|ifa| ifa.address)
        .filter_map(|sa| {
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_interfaces_of_this_host() {
        // Every Linux network namespace has a loopback interface; it may be down in a
        // fresh `unshare -n`, in which case it has no address, so only check the call.
        let addrs = host_addresses().expect("getifaddrs");
        assert!(addrs.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }
}

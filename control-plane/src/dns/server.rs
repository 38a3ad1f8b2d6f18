//! The authoritative server on UDP and TCP; each query is answered by
//! `isola_dns::Responder` (pure code, unit-tested and fuzzed there).

use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isola_dns::Responder;
use isola_dns::Transport;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::Error;

/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Port 0 asks for any port free on both: the one the OS gave UDP can be
/// held on TCP (another process's outgoing connection), so a few are tried.
const ANY_PORT_TRIES: usize = 8;

/// The UDP socket and TCP listener at `addr`, on one port.
async fn bind(
  addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener, SocketAddr), Error> {
  let fail = |what: &'static str| move |source| Error::Listen { addr, what, source };
  let tries = if addr.port() == 0 { ANY_PORT_TRIES } else { 1 };
  let mut tried = 0;
  loop {
    tried += 1;
    let udp = tokio::net::UdpSocket::bind(addr)
      .await
      .map_err(fail("UDP"))?;
    let bound = udp.local_addr().map_err(fail("UDP"))?;
    match tokio::net::TcpListener::bind(bound).await {
      Ok(tcp) => return Ok((udp, tcp, bound)),
      Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tried < tries => continue,
      Err(e) => return Err(fail("TCP")(e)),
    }
  }
}

/// Serves `responder` on UDP and TCP at `addr` (port 0: one free port for
/// both); returns the address bound.
pub async fn start(addr: SocketAddr, responder: Arc<Responder>) -> Result<SocketAddr, Error> {
  let (udp, tcp, bound) = bind(addr).await?;
  tracing::info!(listener = "dns", addr = %bound, "listening");
  let udp = Arc::new(udp);
  let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
  for _ in 0..workers {
    let (udp, responder) = (udp.clone(), responder.clone());
    tokio::spawn(async move {
      let mut buf = vec![0u8; 4096];
      loop {
        let (len, peer) = match udp.recv_from(&mut buf).await {
          Ok(got) => got,
          Err(e) => {
            // Per-packet errors (an ICMP error for an earlier answer) are
            // not the socket's end.
            tracing::debug!(error = %e, "DNS UDP receive failed");
            continue;
          }
        };
        if let Some(answer) = responder.respond(&buf[..len], peer.ip(), Transport::Udp) {
          if let Err(e) = udp.send_to(&answer, peer).await {
            tracing::debug!(error = %e, %peer, "cannot send a DNS answer");
          }
        }
      }
    });
  }
  tokio::spawn(async move {
    loop {
      let (stream, peer) = match tcp.accept().await {
        Ok(got) => got,
        Err(e) => {
          tracing::warn!(error = %e, "DNS TCP accept failed");
          tokio::time::sleep(Duration::from_millis(100)).await;
          continue;
        }
      };
      let responder = responder.clone();
      tokio::spawn(async move {
        if let Err(e) = tcp_connection(stream, peer.ip(), &responder).await {
          tracing::debug!(error = %e, %peer, "DNS TCP connection ended");
        }
      });
    }
  });
  Ok(bound)
}

/// Length-prefixed queries on one connection until it goes idle or closes.
async fn tcp_connection(
  mut stream: tokio::net::TcpStream,
  peer: IpAddr,
  responder: &Responder,
) -> std::io::Result<()> {
  loop {
    let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
      Ok(Ok(len)) => usize::from(len),
      Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
      Ok(Err(e)) => return Err(e),
      Err(_) => return Ok(()),
    };
    let mut packet = vec![0; len];
    tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
      .await
      .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let Some(answer) = responder.respond(&packet, peer, Transport::Tcp) else {
      return Ok(());
    };
    let len = u16::try_from(answer.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(answer.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&answer);
    stream.write_all(&out).await?;
  }
}

//! Certificates and keys for one throw-away control plane, generated fresh
//! for every run so nothing secret is checked in or shared between runs.
//!
//! One CA signs the API server's serving certificate and every client
//! certificate. Client identities follow what kubeadm sets up, so the
//! bootstrap RBAC roles apply to the components exactly as in a real cluster:
//! the controller manager and scheduler are *not* cluster admins.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::Error;

/// The first address of `SERVICE_CLUSTER_IP_RANGE`, which the API server
/// gives the `kubernetes` Service; in-cluster clients reach it there.
pub(crate) const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The same for the Service range of a cluster with a real node
/// (`node::SERVICE_CIDR`): pods reach the API server there.
pub(crate) const NODE_KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// Where the API server listens when a real node is attached: the host end
/// of the node's veth (`node::HOST_ADDR`).
pub(crate) const NODE_API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// The node's own address (`node::NODE_ADDR`), in the kubelet's serving certificate.
pub(crate) const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 2);
/// Name of the real node; its kubelet authenticates as `system:node:<name>`.
pub(crate) const NODE_NAME: &str = "oxcast-node";

/// Common name the API server presents to aggregated API servers; the only
/// name allowed to assert users through request headers.
pub(crate) const FRONT_PROXY_CLIENT: &str = "front-proxy-client";

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// All files of the control plane's PKI.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub serving: CertPair,
    /// `system:masters`: what tests and kwok use.
    pub admin: CertPair,
    pub controller_manager: CertPair,
    pub scheduler: CertPair,
    /// CA of the request-header (front proxy) authentication.
    pub front_proxy_ca: PathBuf,
    /// The API server's client certificate towards aggregated API servers.
    pub front_proxy_client: CertPair,
    /// Signs ServiceAccount tokens (API server) and verifies them.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
    /// The real node's kubelet: `system:node:<NODE_NAME>` in `system:nodes`,
    /// which the Node authorizer and NodeRestriction admission expect.
    pub kubelet_client: CertPair,
    /// The kubelet's serving certificate (for 198.18.255.2).
    pub kubelet_serving: CertPair,
    /// The API server's client certificate towards kubelets (logs, exec).
    pub apiserver_kubelet_client: CertPair,
    /// kube-proxy: `system:kube-proxy`, bound to `system:node-proxier`.
    pub kube_proxy: CertPair,
}

impl Pki {
    /// Generates everything into `dir`.
    pub(crate) fn generate(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(Error::io_path("create the PKI directory", dir))?;

        let (ca_path, ca) = new_ca(dir, "ca", "oxcast-test-ca")?;

        // Both layouts' addresses: with a real node the API server listens on
        // the veth address and pods reach it through the `kubernetes` Service.
        let serving = serving_cert(
            dir,
            "apiserver",
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                Ipv4Addr::LOCALHOST,
                KUBERNETES_SERVICE_IP,
                NODE_KUBERNETES_SERVICE_IP,
                NODE_API_SERVER_IP,
            ],
            &ca,
        )?;

        let admin = client_cert(
            dir,
            "admin",
            "oxcast-test-admin",
            Some("system:masters"),
            &ca,
        )?;
        let controller_manager = client_cert(
            dir,
            "controller-manager",
            "system:kube-controller-manager",
            None,
            &ca,
        )?;
        let scheduler = client_cert(dir, "scheduler", "system:kube-scheduler", None, &ca)?;

        // The aggregation layer's own CA, as kubeadm sets it up: the API
        // server proves to extension API servers, with this client
        // certificate, that it authenticated the user named in its headers.
        // Without it the controller manager and scheduler keep logging that
        // the request-header CA bundle is missing.
        let (front_proxy_ca, front_proxy) =
            new_ca(dir, "front-proxy-ca", "oxcast-test-front-proxy-ca")?;
        let front_proxy_client = client_cert(
            dir,
            "front-proxy-client",
            FRONT_PROXY_CLIENT,
            None,
            &front_proxy,
        )?;

        let kubelet_client = client_cert(
            dir,
            "kubelet-client",
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
            &ca,
        )?;
        let kubelet_serving = serving_cert(
            dir,
            "kubelet-serving",
            NODE_NAME,
            &[NODE_NAME],
            &[NODE_IP],
            &ca,
        )?;
        let apiserver_kubelet_client = client_cert(
            dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            &ca,
        )?;
        let kube_proxy = client_cert(dir, "kube-proxy", "system:kube-proxy", None, &ca)?;

        let sa = KeyPair::generate()?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write(&service_account_key, &sa.serialize_pem())?;
        write(&service_account_pub, &sa.public_key_pem())?;

        Ok(Self {
            ca_cert: ca_path,
            serving,
            admin,
            controller_manager,
            scheduler,
            front_proxy_ca,
            front_proxy_client,
            service_account_key,
            service_account_pub,
            kubelet_client,
            kubelet_serving,
            apiserver_kubelet_client,
            kube_proxy,
        })
    }
}

/// A self-signed CA written to `<dir>/<file_stem>.crt`, and its issuer.
fn new_ca(
    dir: &Path,
    file_stem: &str,
    common_name: &str,
) -> Result<(PathBuf, Issuer<'static, KeyPair>), Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    let path = dir.join(format!("{file_stem}.crt"));
    write(&path, &cert.pem())?;
    Ok((path, Issuer::new(params, key)))
}

/// A server certificate for `names` and `ips`, with common name `cn`.
fn serving_cert(
    dir: &Path,
    file_stem: &str,
    cn: &str,
    names: &[&str],
    ips: &[Ipv4Addr],
    ca: &Issuer<'_, KeyPair>,
) -> Result<CertPair, Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(IpAddr::V4(*ip))));
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sign(dir, file_stem, params, ca)
}

/// A client certificate: the API server maps CN to the user name and each O
/// to a group.
fn client_cert(
    dir: &Path,
    file_stem: &str,
    user: &str,
    group: Option<&str>,
    ca: &Issuer<'_, KeyPair>,
) -> Result<CertPair, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sign(dir, file_stem, params, ca)
}

fn sign(
    dir: &Path,
    file_stem: &str,
    params: CertificateParams,
    ca: &Issuer<'_, KeyPair>,
) -> Result<CertPair, Error> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let pair = CertPair {
        cert: dir.join(format!("{file_stem}.crt")),
        key: dir.join(format!("{file_stem}.key")),
    };
    write(&pair.cert, &cert.pem())?;
    write(&pair.key, &key.serialize_pem())?;
    Ok(pair)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    fs::write(path, contents).map_err(Error::io_path("write a PKI file", path))
}

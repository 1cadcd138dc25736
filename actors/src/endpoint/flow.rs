//! The steps of an endpoint's life, as async functions over the manager's outputs: create
//! (with rollback), teardown and restore. They hold no manager state: the manager reserves
//! the id before and records the outcome after, so creations of different pods run
//! concurrently while the manager keeps answering.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use datapath::api::{
    EndpointAttachment, EndpointId, EndpointInfo, EndpointKey, EndpointLinkInfo, EndpointLinkSpec,
    EndpointLinks, IpcacheKey,
};
use datapath::reconciler::messages::{AttachEndpoint, DeleteLxc, DetachEndpoint, UpsertLxc};
use model::identity::NumericIdentity;
use model::labels::{LabelFilter, Labels};
use tracing::{debug, warn};

use super::messages::{CreateEndpoint, EndpointError, Step};
use super::state::{EndpointRecord, EndpointState, Resources};
use super::store::EndpointStore;
use crate::identity::{AllocateIdentity, IdentityError, ReleaseIdentity};
use crate::ipam::{AllocateIp, IpamError, ReleaseIp};
use crate::ipcache::{DeleteIp, Effective, IpEntry, K8sMetadata, Source, UpsertIp};
use crate::policy::{
    EndpointPolicyWait, EndpointPolicyWanted, EndpointRemoved, NamedPort, Revision,
};

/// Where the endpoint manager sends what it asks of the other actors.
#[derive(Debug, Clone)]
pub struct EndpointOutputs {
    pub allocate_ip: Recipient<AllocateIp>,
    pub release_ip: Recipient<ReleaseIp>,
    pub allocate_identity: Recipient<AllocateIdentity>,
    pub release_identity: Recipient<ReleaseIdentity>,
    pub upsert_ip: Recipient<UpsertIp>,
    pub delete_ip: Recipient<DeleteIp>,
    pub upsert_lxc: Recipient<UpsertLxc>,
    pub delete_lxc: Recipient<DeleteLxc>,
    pub attach: Recipient<AttachEndpoint>,
    pub detach: Recipient<DetachEndpoint>,
    pub policy_wanted: Recipient<EndpointPolicyWanted>,
    pub policy_removed: Recipient<EndpointRemoved>,
    /// Waits for this endpoint's policy only, not for every endpoint of the node.
    pub policy_wait: Recipient<EndpointPolicyWait>,
}

/// Configuration of the endpoint manager.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Records go to `<state_dir>/endpoints/`.
    pub state_dir: PathBuf,
    /// The router address of the node's pod range, every pod's gateway.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// The node's network namespace, where the host-side interfaces live (`None`: the
    /// agent's own).
    pub node_netns: Option<PathBuf>,
    /// How long a creation waits for its policy to be realized before giving up.
    pub policy_wait_timeout: Duration,
    /// Which labels make identities.
    pub label_filter: LabelFilter,
}

impl EndpointConfig {
    /// Defaults for a node: MTU 1500, the agent's namespace, a 30 s policy wait.
    pub fn new(state_dir: PathBuf, gateway: Ipv4Addr) -> Self {
        EndpointConfig {
            state_dir,
            gateway,
            mtu: 1500,
            node_netns: None,
            policy_wait_timeout: Duration::from_secs(30),
            label_filter: LabelFilter::default(),
        }
    }
}

/// What removing an endpoint needs to know.
#[derive(Debug, Clone)]
pub(super) struct Teardown {
    pub id: EndpointId,
    pub ip: Option<Ipv4Addr>,
    pub host_ifname: String,
    pub identity_labels: Labels,
}

impl Teardown {
    pub fn of(record: &EndpointRecord) -> Self {
        Teardown {
            id: record.id,
            ip: Some(record.ip),
            host_ifname: record.host_ifname.clone(),
            identity_labels: record.identity_labels.clone(),
        }
    }
}

/// The outputs, the links and the configuration, shared by every flow.
#[derive(Debug)]
pub(super) struct Flow {
    pub outputs: EndpointOutputs,
    pub links: Arc<dyn EndpointLinks>,
    pub config: EndpointConfig,
}

fn step_err(id: EndpointId, step: Step, reason: impl fmt::Display) -> EndpointError {
    EndpointError::Step {
        id,
        step,
        reason: reason.to_string(),
    }
}

/// The actor behind a recipient stopped: the message was not handled.
fn stopped(actor: &str) -> String {
    format!("the {actor} actor is not running")
}

impl Flow {
    /// Creates an endpoint under a reserved id; on failure undoes every step done so far, in
    /// reverse order, and answers the error of the step that failed.
    pub async fn create(
        &self,
        id: EndpointId,
        req: CreateEndpoint,
        host_ifname: String,
        store: &EndpointStore,
    ) -> Result<EndpointRecord, EndpointError> {
        let (identity_labels, _) = self.config.label_filter.filter(&req.labels);
        let mut plan = Teardown {
            id,
            ip: None,
            host_ifname,
            identity_labels,
        };
        let mut held = Resources::default();
        match self.build(&req, &mut plan, &mut held, store).await {
            Ok(record) => Ok(record),
            Err(err) => {
                warn!(endpoint = %id, container = %req.container_id, error = %err, "endpoint creation failed, rolling back");
                let failures = self.teardown(&plan, &mut held).await;
                if !failures.is_empty() {
                    tracing::error!(endpoint = %id, left = ?held.names(), failures = ?failures, "rollback of endpoint left resources behind");
                }
                Err(err)
            }
        }
    }

    async fn build(
        &self,
        req: &CreateEndpoint,
        plan: &mut Teardown,
        held: &mut Resources,
        store: &EndpointStore,
    ) -> Result<EndpointRecord, EndpointError> {
        let id = plan.id;
        let ip = match self
            .outputs
            .allocate_ip
            .send(AllocateIp {
                owner: req.container_id.clone(),
                ip: req.requested_ip,
            })
            .await
        {
            Ok(Ok(ip)) => ip,
            Ok(Err(err)) => return Err(step_err(id, Step::AllocateIp, err)),
            Err(_) => return Err(step_err(id, Step::AllocateIp, stopped("ipam"))),
        };
        held.ip = true;
        plan.ip = Some(ip);

        let spec = EndpointLinkSpec {
            endpoint: id,
            host_ifname: plan.host_ifname.clone(),
            pod_netns: req.netns.clone(),
            pod_ifname: req.ifname.clone(),
            pod_ip: ip,
            gateway: self.config.gateway,
            mtu: self.config.mtu,
        };
        held.links = true;
        let link = self
            .links
            .create(&spec)
            .await
            .map_err(|err| step_err(id, Step::CreateLinks, datapath::api::error_chain(&err)))?;

        let identity = self.identity(id, plan, held, None).await?;
        self.claim(
            id,
            held,
            ip,
            &link,
            (&req.pod_namespace, &req.pod_name),
            identity,
        )
        .await?;
        let policy_revision = self
            .policy(id, plan, held, &req.named_ports, identity)
            .await?;

        let record = EndpointRecord {
            id,
            state: EndpointState::Ready,
            container_id: req.container_id.clone(),
            pod_name: req.pod_name.clone(),
            pod_namespace: req.pod_namespace.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            host_ifname: link.host_ifname.clone(),
            host_ifindex: link.host_ifindex,
            host_mac: link.host_mac,
            mac: link.pod_mac,
            ip,
            gateway: self.config.gateway,
            mtu: link.mtu,
            labels: req.labels.clone(),
            identity_labels: plan.identity_labels.clone(),
            identity,
            named_ports: req.named_ports.clone(),
            policy_revision,
            held: Resources::ALL,
        };
        if let Err(err) = store.save(&record) {
            let reason = datapath::api::error_chain(&err);
            // A half-written record would restore an endpoint that no longer exists.
            if let Err(err) = store.remove(id) {
                warn!(endpoint = %id, error = %err, "could not remove a partial endpoint record");
            }
            return Err(step_err(id, Step::Persist, reason));
        }
        Ok(record)
    }

    /// Allocates the endpoint's identity. A restored endpoint prefers the identity it had, so
    /// its policy map, its `cilium_lxc` entry and the peers' entries for it stay as they are.
    async fn identity(
        &self,
        id: EndpointId,
        plan: &Teardown,
        held: &mut Resources,
        preferred: Option<NumericIdentity>,
    ) -> Result<NumericIdentity, EndpointError> {
        let identity = match self
            .outputs
            .allocate_identity
            .send(AllocateIdentity {
                labels: plan.identity_labels.clone(),
                preferred,
            })
            .await
        {
            Ok(Ok(allocated)) => {
                if preferred.is_some_and(|p| p != allocated.id) {
                    warn!(endpoint = %id, identity = %allocated.id, ?preferred, "restored endpoint got another identity");
                }
                allocated.id
            }
            Ok(Err(err)) => return Err(step_err(id, Step::AllocateIdentity, err)),
            Err(_) => return Err(step_err(id, Step::AllocateIdentity, stopped("identity"))),
        };
        held.identity = true;
        Ok(identity)
    }

    /// Ipcache entry, `cilium_lxc` entry and attachment for an endpoint holding `identity`:
    /// what a restored endpoint claims again too.
    async fn claim(
        &self,
        id: EndpointId,
        held: &mut Resources,
        ip: Ipv4Addr,
        link: &EndpointLinkInfo,
        pod: (&str, &str),
        identity: NumericIdentity,
    ) -> Result<(), EndpointError> {
        let (pod_namespace, pod_name) = pod;

        held.ipcache = true;
        let entry = IpEntry {
            k8s: Some(K8sMetadata {
                namespace: pod_namespace.to_owned(),
                pod_name: pod_name.to_owned(),
                service_account: String::new(),
                named_ports: Vec::new(),
            }),
            ..IpEntry::identity(identity)
        };
        match self
            .outputs
            .upsert_ip
            .send(UpsertIp {
                key: IpcacheKey::host(IpAddr::V4(ip)),
                source: Source::Local,
                entry,
            })
            .await
        {
            Ok(Effective::Applied) => {}
            Ok(Effective::ShadowedBy(source)) => {
                warn!(endpoint = %id, %ip, ?source, "the endpoint's ipcache entry is shadowed");
            }
            Err(_) => return Err(step_err(id, Step::UpsertIpcache, stopped("ipcache"))),
        }

        held.lxc = true;
        let info = EndpointInfo {
            ifindex: link.host_ifindex,
            lxc_id: id,
            mac: link.pod_mac,
            node_mac: link.host_mac,
            identity,
            is_host: false,
        };
        self.outputs
            .upsert_lxc
            .send(UpsertLxc {
                entries: vec![(EndpointKey::new(IpAddr::V4(ip)), info)],
            })
            .await
            .map_err(|_| step_err(id, Step::UpsertLxc, stopped("datapath")))?;

        held.attachment = true;
        let attachment = EndpointAttachment {
            endpoint: id,
            ifname: link.host_ifname.clone(),
            netns: self.config.node_netns.clone(),
        };
        match self.outputs.attach.send(AttachEndpoint(attachment)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(step_err(id, Step::Attach, datapath::api::error_chain(&err))),
            Err(_) => Err(step_err(id, Step::Attach, stopped("datapath"))),
        }
    }

    /// Hands the endpoint to the policy repository and waits until its policy is realized.
    async fn policy(
        &self,
        id: EndpointId,
        plan: &Teardown,
        held: &mut Resources,
        named_ports: &[NamedPort],
        identity: NumericIdentity,
    ) -> Result<Revision, EndpointError> {
        held.policy = true;
        let revision = self
            .outputs
            .policy_wanted
            .send(EndpointPolicyWanted {
                endpoint: id,
                identity,
                labels: plan.identity_labels.clone(),
                named_ports: named_ports.to_vec(),
            })
            .await
            .map_err(|_| step_err(id, Step::Policy, stopped("policy repository")))?;
        let wait = self.outputs.policy_wait.send(EndpointPolicyWait {
            endpoint: id,
            revision,
        });
        match tokio::time::timeout(self.config.policy_wait_timeout, wait).await {
            Ok(Ok(Ok(_realized))) => Ok(revision),
            Ok(Ok(Err(err))) => Err(step_err(id, Step::PolicyWait, err)),
            Ok(Err(_)) => Err(step_err(id, Step::PolicyWait, stopped("policy repository"))),
            Err(_) => Err(step_err(
                id,
                Step::PolicyWait,
                format!(
                    "revision {revision} was not realized within {:?}",
                    self.config.policy_wait_timeout
                ),
            )),
        }
    }

    /// The first phase of a restore: the identity of a persisted endpoint that is to be
    /// restored (its veth pair still exists), preferring the one it had. The manager
    /// allocates every restored endpoint's identity before it restores any endpoint's policy,
    /// so no endpoint's policy is computed while a peer's identity is still missing (which
    /// would remove that peer's entries from its map until the peer is restored). `None` for
    /// an endpoint that will not be restored.
    pub async fn restore_identity(
        &self,
        record: &EndpointRecord,
    ) -> Option<Result<NumericIdentity, String>> {
        if record.state == EndpointState::Disconnecting
            || !matches!(self.links.get(&record.host_ifname).await, Ok(Some(_)))
        {
            return None;
        }
        let plan = Teardown::of(record);
        let mut held = Resources::default();
        Some(
            self.identity(record.id, &plan, &mut held, Some(record.identity))
                .await
                .map_err(|err| err.to_string()),
        )
    }

    /// Claims a persisted endpoint's resources again after an agent restart: the veth pair
    /// must still exist; address, ipcache and `cilium_lxc` entries, attachment and policy
    /// are requested again (all idempotent for what survived in the kernel), with the
    /// identity from [`Self::restore_identity`]. On failure, or for an endpoint that was
    /// being removed, the endpoint is torn down; the error carries the reason and what could
    /// not be given back.
    pub async fn restore(
        &self,
        mut record: EndpointRecord,
        identity: Option<Result<NumericIdentity, String>>,
    ) -> Result<EndpointRecord, (String, Resources)> {
        let plan = Teardown::of(&record);
        // What outlives the agent: the address (persisted by IPAM), the pair, the pinned
        // map entries and attachment. Ipcache and policy lived in the old process; the
        // identity was allocated again by `restore_identity`.
        let mut held = Resources {
            ip: true,
            links: true,
            lxc: true,
            attachment: true,
            ..record.held
        };
        if matches!(identity, Some(Ok(_))) {
            held.identity = true;
        }
        let reason = if record.state == EndpointState::Disconnecting {
            "its removal was in progress".to_owned()
        } else {
            match self.reclaim(&mut record, &plan, &mut held, identity).await {
                Ok(()) => return Ok(record),
                Err(reason) => reason,
            }
        };
        let failures = self.teardown(&plan, &mut held).await;
        if failures.is_empty() {
            Err((reason, held))
        } else {
            Err((
                format!("{reason}; removal failed: {}", failures.join("; ")),
                held,
            ))
        }
    }

    async fn reclaim(
        &self,
        record: &mut EndpointRecord,
        plan: &Teardown,
        held: &mut Resources,
        identity: Option<Result<NumericIdentity, String>>,
    ) -> Result<(), String> {
        let id = record.id;
        let link = match self.links.get(&record.host_ifname).await {
            Ok(Some(link)) => link,
            Ok(None) => {
                held.links = false;
                return Err(format!("veth pair {} is gone", record.host_ifname));
            }
            Err(err) => return Err(datapath::api::error_chain(&err)),
        };
        let identity = match identity {
            Some(identity) => identity?,
            // The pair appeared between the two phases: allocate now.
            None => self
                .identity(id, plan, held, Some(record.identity))
                .await
                .map_err(|err| err.to_string())?,
        };
        match self
            .outputs
            .allocate_ip
            .send(AllocateIp {
                owner: record.container_id.clone(),
                ip: Some(record.ip),
            })
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(step_err(id, Step::AllocateIp, err).to_string()),
            Err(_) => return Err(stopped("ipam")),
        }
        let pod = (record.pod_namespace.as_str(), record.pod_name.as_str());
        self.claim(id, held, record.ip, &link, pod, identity)
            .await
            .map_err(|err| err.to_string())?;
        let revision = self
            .policy(id, plan, held, &record.named_ports, identity)
            .await
            .map_err(|err| err.to_string())?;
        record.identity = identity;
        record.host_ifindex = link.host_ifindex;
        record.host_mac = link.host_mac;
        record.mac = link.pod_mac;
        record.policy_revision = revision;
        record.state = EndpointState::Ready;
        record.held = Resources::ALL;
        Ok(())
    }

    /// Gives back what `held` says the endpoint holds, newest first. Every step is tried;
    /// a step that succeeds clears its flag, so a later teardown retries only what failed.
    /// Answers the failures.
    pub async fn teardown(&self, plan: &Teardown, held: &mut Resources) -> Vec<String> {
        let id = plan.id;
        let mut failures = Vec::new();
        if held.policy {
            match self
                .outputs
                .policy_removed
                .send(EndpointRemoved { endpoint: id })
                .await
            {
                Ok(()) => held.policy = false,
                Err(_) => failures.push(format!("policy: {}", stopped("policy repository"))),
            }
        }
        if held.attachment {
            match self
                .outputs
                .detach
                .send(DetachEndpoint { endpoint: id })
                .await
            {
                Ok(Ok(())) => held.attachment = false,
                Ok(Err(err)) => {
                    failures.push(format!("detach: {}", datapath::api::error_chain(&err)))
                }
                Err(_) => failures.push(format!("detach: {}", stopped("datapath"))),
            }
        }
        if held.lxc {
            match plan.ip {
                Some(ip) => match self
                    .outputs
                    .delete_lxc
                    .send(DeleteLxc {
                        keys: vec![EndpointKey::new(IpAddr::V4(ip))],
                    })
                    .await
                {
                    Ok(()) => held.lxc = false,
                    Err(_) => failures.push(format!("endpoint map: {}", stopped("datapath"))),
                },
                None => held.lxc = false,
            }
        }
        if held.ipcache {
            match plan.ip {
                Some(ip) => match self
                    .outputs
                    .delete_ip
                    .send(DeleteIp {
                        key: IpcacheKey::host(IpAddr::V4(ip)),
                        source: Source::Local,
                    })
                    .await
                {
                    Ok(()) => held.ipcache = false,
                    Err(_) => failures.push(format!("ipcache: {}", stopped("ipcache"))),
                },
                None => held.ipcache = false,
            }
        }
        if held.identity {
            match self
                .outputs
                .release_identity
                .send(ReleaseIdentity {
                    labels: plan.identity_labels.clone(),
                })
                .await
            {
                // Not allocated: a previous agent's reference, gone with it.
                Ok(Ok(_) | Err(IdentityError::NotAllocated { .. })) => held.identity = false,
                Ok(Err(err)) => failures.push(format!("identity: {err}")),
                Err(_) => failures.push(format!("identity: {}", stopped("identity"))),
            }
        }
        if held.links {
            match self.links.delete(&plan.host_ifname).await {
                Ok(existed) => {
                    debug!(endpoint = %id, ifname = %plan.host_ifname, existed, "veth pair removed");
                    held.links = false;
                }
                Err(err) => failures.push(format!("veth: {}", datapath::api::error_chain(&err))),
            }
        }
        // The address stays allocated while the pair that is configured with it exists, so
        // it cannot go to another pod while this one's route still points at it.
        if held.ip && !held.links {
            match plan.ip {
                Some(ip) => match self.outputs.release_ip.send(ReleaseIp { ip }).await {
                    Ok(Ok(()) | Err(IpamError::NotAllocated { .. })) => held.ip = false,
                    Ok(Err(err)) => failures.push(format!("ip {ip}: {err}")),
                    Err(_) => failures.push(format!("ip {ip}: {}", stopped("ipam"))),
                },
                None => held.ip = false,
            }
        }
        failures
    }
}

//! vnf-router as an L3 router and NAT between kernel `vxlan` hosts and an OVS VLAN.
//! (Being written.)

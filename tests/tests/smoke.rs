use aya::{Ebpf, programs::Xdp};

#[test]
fn loads() {
    let mut ebpf = Ebpf::load(lb_userspace::objects::XDP_LB).unwrap();
    let p: &mut Xdp = ebpf.program_mut("xdp_lb").unwrap().try_into().unwrap();
    p.load().unwrap();
    for (name, obj) in [("xdp_decap", lb_userspace::objects::XDP_DECAP)] {
        let mut ebpf = Ebpf::load(obj).unwrap();
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap();
    }
    let mut ebpf = Ebpf::load(lb_userspace::objects::XDP_TOOLS).unwrap();
    for name in ["xdp_pass", "xdp_tx", "xdp_mac_swap", "xdp_count"] {
        let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap();
    }
}

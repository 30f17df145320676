//! volmig: live migration of a running KVM guest's disk between storage pools.
pub mod proto {
    //! Generated gRPC types.
    #![allow(missing_docs)]
    tonic::include_proto!("volmig.v1");
    /// Encoded descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("volmig_descriptor");
}

//! Export of an encoder in torchvision's key names, as safetensors that
//! `torchvision.models.resnet50().load_state_dict(safetensors.torch.load_file(X), strict=False)`
//! loads with only `fc.*` missing. burn-store cannot write `.pth`; `torch.save` of the loaded
//! dict converts in one line.

use std::collections::HashMap;
use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use safetensors::tensor::{Dtype, TensorView};

use super::to_torchvision_name;
use crate::models::resnet::ResNet;
use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

/// The encoder's tensors in torchvision names, each as (name, shape, little-endian f32 bytes),
/// plus a zero `num_batches_tracked` (int64 scalar) per BatchNorm as torchvision keeps.
pub fn torchvision_tensors(encoder: &ResNet) -> Result<Vec<(String, Vec<usize>, Dtype, Vec<u8>)>> {
    let mut out = Vec::new();
    for tensor in encoder.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false) {
        let name = to_torchvision_name(&tensor.name);
        let data = burn::store::bridge::to_data(&tensor)
            .map_err(|e| Error::Invalid(format!("cannot read tensor {name}: {e:?}")))?;
        let values: Vec<f32> = data
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| Error::Invalid(format!("tensor {name} is not float: {e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        if let Some(bn) = name.strip_suffix(".running_var") {
            out.push((format!("{bn}.num_batches_tracked"), vec![], Dtype::I64, 0i64.to_le_bytes().to_vec()));
        }
        out.push((name, tensor.shape.to_vec(), Dtype::F32, bytes));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the encoder as a torchvision-named safetensors file, atomically.
pub fn export_torchvision(encoder: &ResNet, path: &Path) -> Result<usize> {
    let tensors = torchvision_tensors(encoder)?;
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            let view = TensorView::new(*dtype, shape.clone(), bytes).expect("sizes agree by construction");
            (name.clone(), view)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Invalid(format!("cannot serialize {}: {e}", path.display())))?;
    write_atomic(path, &bytes)?;
    Ok(tensors.len())
}

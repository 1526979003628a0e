"""adapters: the call styles users already type in other libraries, on onnx_xai's engines.

Import the one you use (nothing here is imported eagerly, so a module stays cheap to load):

* ``onnx_xai.adapters.pytorch_grad_cam`` — ``GradCAM(model=..., target_layers=[...])`` as
  pytorch-grad-cam: ``cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])`` → ``(B, H, W)``,
  ``show_cam_on_image``;
* ``onnx_xai.adapters.captum`` — ``IntegratedGradients(model).attribute(...)``, ``Occlusion``,
  ``Saliency``, ``NoiseTunnel``, ``LayerGradCam``, ``visualize_image_attr`` as Captum;
* ``onnx_xai.adapters.monai`` — ``model_argument``: MONAI's ``nn_module=`` keyword, accepted by
  ``onnx_xai.GradCAM``, ``GradCAMpp``, ``CAM`` and ``OcclusionSensitivity`` themselves.

Where the other library takes a torch model, these take anything ``onnx_xai.Model`` accepts;
where it returns tensors, they return NumPy arrays (torch tensors given as inputs are read
through ``.detach().cpu().numpy()``; torch itself is never imported).
"""

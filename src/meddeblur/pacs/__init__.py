"""A DICOM node that deblurs what a PACS receives: ``meddeblur pacs`` (see docs/pacs.md).

Two ways in, one way of working: :mod:`~meddeblur.pacs.dicomweb` polls a DICOMweb archive (QIDO-RS, WADO-RS, STOW-RS)
and :mod:`~meddeblur.pacs.scp` receives C-STOREs and forwards; both hand each instance to :class:`~meddeblur.pacs.node.Node`,
which makes the derived instance (:mod:`~meddeblur.pacs.derive`, the same code as ``meddeblur deblur``) once, and records
it (:mod:`~meddeblur.pacs.state`). Nothing imports this package but the CLI: it is an application of the library, not
part of it.
"""

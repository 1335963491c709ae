"""Image files in and out: :mod:`~meddeblur.io.decode` (read), :mod:`~meddeblur.io.encode` (write, to bytes or files),
:mod:`~meddeblur.io.formats` (the format table and the decoded image type), :mod:`~meddeblur.io.tiff`,
:mod:`~meddeblur.io.dicom`, :mod:`~meddeblur.io.provenance` (records embedded in outputs) and
:mod:`~meddeblur.io.ownership` (reading them back; the overwrite rule) and :mod:`~meddeblur.io.listing` (the images of a
folder).

The package itself imports nothing, so any of its modules can be imported alone.
"""
